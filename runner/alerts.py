"""Tell someone about a report: a webhook message (Slack or generic JSON) and the nightly heartbeat.

Advice only: a message that cannot be sent is a warning, never a different exit code. The URLs are
secrets (targets.yaml holds only `env:VARIABLE`), so they are read when posting and never appear in
a message, a log line or an error; the reasons sent are the report's own, already sanitised, lines.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from . import github
from .errors import DbBackupError
from .notify import Notify
from .report import SCHEDULE, Failing, Outcome
from .settings import GithubEnv
from .targets import AlertsConfig, Registry
from .words import plural

if TYPE_CHECKING:
    from .services import Services

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0  # per attempt; read when posting, so a test can shorten it
ATTEMPTS = 2
RETRY_PAUSE_S = 1.0
SHOWN_TARGETS = 20  # a Slack message holds at most 50 blocks; the rest are counted, the run page has them all
REASON_CHARS = 500
RESPONSE_BYTES = 64 * 1024  # read (and dropped) so the connection ends cleanly
TITLE = "db-backup alerts"

# Stale means what `db-backup status` means: no good backup newer than its --max-age.
StaleCheck = Callable[[], Mapping[str, str] | None]


# --- what is sent -------------------------------------------------------------------------------


def stale_targets(registry: Registry, services: Services, max_age: timedelta) -> dict[str, str] | None:
    """Each scheduled target `status` calls stale, with its sentence; None when the store could not tell."""
    from .status import target_statuses

    try:
        statuses = target_statuses(registry, services, max_age, SCHEDULE)
    except Exception as exc:  # advice: an unreadable store must not fail the report
        log.warning("alerts: cannot tell the age of the newest backups (%s); stale backups are not reported "
                    "and a heartbeat is not pinged", _exception_words(exc))
        return None
    # status lists the stale sentence first for a stale target.
    return {s.target.name: s.problems[0].removeprefix(f"{s.target.name}: ") for s in statuses if s.stale}


def with_stale(outcome: Outcome, stale: Mapping[str, str]) -> Outcome:
    """The outcome with stale targets added as failing (after tonight's failures), or their failure's reason extended."""
    failing = [replace(f, reason=f"{f.reason}; {stale[f.target]}") if f.target in stale else f for f in outcome.failing]
    named = {f.target for f in failing}
    failing += [Failing(name, "stale", why) for name, why in stale.items() if name not in named]
    return replace(outcome, failing=tuple(failing))


def run_url(gh: GithubEnv) -> str | None:
    """The GitHub Actions run this report belongs to, when running there."""
    if not gh.repository or not gh.run_id:
        return None
    url = f"{gh.server_url.rstrip('/')}/{gh.repository}/actions/runs/{gh.run_id}"
    return url + (f"/attempts/{gh.run_attempt}" if gh.run_attempt and gh.run_attempt != "1" else "")


def headline(outcome: Outcome) -> str:
    """`❌ Nightly backups: 1 of 8 targets failed, 1 stale` and the like."""
    nightly = outcome.report == "nightly"
    what = "Nightly backups" if nightly else "Restore drills"
    if outcome.ok:
        done = "succeeded" if nightly else "passed"
        count = plural(outcome.targets, "target")
        return f"✅ {what}: all {count} {done}" if outcome.targets else f"✅ {what}: no target"
    stale = sum(1 for f in outcome.failing if f.result == "stale")
    failed = len(outcome.failing) - stale
    parts = [f"{failed} of {plural(outcome.targets, 'target')} failed"] if failed else []
    parts += [f"{stale} stale"] if stale else []
    parts += [plural(len(outcome.problems), "unreadable result file")] if outcome.problems else []
    return f"❌ {what}: {', '.join(parts)}"


def _clip(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= REASON_CHARS else flat[:REASON_CHARS - 1] + "…"


def _slack_escape(text: str) -> str:
    # The three characters Slack's mrkdwn reserves; everything else is shown as written.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(outcome: Outcome, url: str | None) -> dict[str, Any]:
    """Blocks (a header, one line per failing target, the run's link) and a plain `text` fallback."""
    title = headline(outcome)
    shown, more = outcome.failing[:SHOWN_TARGETS], len(outcome.failing) - SHOWN_TARGETS
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": True}}]
    blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{_slack_escape(f.target)}*: {_slack_escape(_clip(f.reason))}"}}
               for f in shown]
    if more > 0:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"and {more} more: see the run"}]})
    if outcome.problems:
        listed = "\n".join(f"• {_slack_escape(_clip(p))}" for p in outcome.problems[:5])
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Unreadable results*\n{listed}"}})
    if url:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{url}|GitHub Actions run>"}]})
    lines = [title, *(f"{f.target}: {_clip(f.reason)}" for f in shown)]
    lines += [f"and {more} more"] if more > 0 else []
    lines += [f"Unreadable result: {_clip(p)}" for p in outcome.problems[:5]]
    lines += [f"Run: {url}"] if url else []
    return {"text": _slack_escape("\n".join(lines)), "blocks": blocks}


def json_message(outcome: Outcome, url: str | None, repository: str | None) -> dict[str, Any]:
    """The generic shape: every failing target, the counts and the run's link."""
    return {
        "source": "db-backup",
        "report": outcome.report,
        "status": "success" if outcome.ok else "failure",
        "summary": headline(outcome),
        "targets": outcome.targets,
        "failing": [{"target": f.target, "result": f.result, "reason": _clip(f.reason)} for f in outcome.failing],
        "problems": [_clip(p) for p in outcome.problems],
        "repository": repository,
        "run_url": url,
    }


# --- sending ------------------------------------------------------------------------------------


def _exception_words(exc: BaseException) -> str:
    # Our own errors are sentences written to be shown; anything else may carry what it was given.
    return str(exc) if isinstance(exc, DbBackupError) else type(exc).__name__


def _network_words(reason: object) -> str:
    """Why a connection failed, never quoting the exception, whose text may name the host or URL."""
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, ssl.SSLError):
        return "TLS error"
    if isinstance(reason, socket.gaierror):
        return "host name not found"
    if isinstance(reason, ConnectionError):
        return "connection lost"
    if isinstance(reason, http.client.HTTPException):
        return "not an HTTP response"
    if isinstance(reason, OSError) and reason.strerror:
        return str(reason.strerror)
    return "cannot connect"


def _attempt(url: str, body: bytes | None, timeout_s: float) -> tuple[str | None, bool]:
    """One request: (None, _) when delivered, else (why, whether another attempt may help)."""
    headers = {"User-Agent": "db-backup"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    # Only http(s) URLs get here (_resolve checks the scheme), so urllib opens no file: or custom scheme.
    request = urllib.request.Request(url, data=body, headers=headers, method="GET" if body is None else "POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            response.read(RESPONSE_BYTES)
        return None, False
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"HTTP {exc.code}", exc.code >= 500 or exc.code == 429
    except urllib.error.URLError as exc:
        return _network_words(exc.reason), True
    except (OSError, http.client.HTTPException) as exc:
        return _network_words(exc), True
    except ValueError:
        return "not a valid URL", False


def _send(url: str, body: bytes | None, timeout_s: float) -> str | None:
    """At most ATTEMPTS requests; None when one was delivered, else why the last one was not."""
    problem: str | None = None
    for attempt in range(1, ATTEMPTS + 1):
        problem, again = _attempt(url, body, timeout_s)
        if problem is None or not again or attempt == ATTEMPTS:
            break
        log.info("alerts: %s; trying once more", problem)
        time.sleep(RETRY_PAUSE_S)
    return problem


def _resolve(reference: str, what: str, warn: Callable[[str], None]) -> str | None:
    """The URL an `env:VARIABLE` reference names; a warning naming the variable (never its value) if unusable."""
    name = reference.removeprefix("env:")
    value = os.environ.get(name, "").strip()
    if not value:
        warn(f"{name} is not set, so no {what} was sent; set it from a repository secret")
        return None
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        warn(f"{name} does not hold an http(s) URL, so no {what} was sent")
        return None
    return value


def deliver(outcome: Outcome, config: AlertsConfig, gh: GithubEnv, notify: Notify | None = None,
            stale: StaleCheck | None = None, timeout_s: float | None = None) -> None:
    """Send what the alerts settings ask for; every problem is a warning, nothing is raised."""
    try:
        _deliver(outcome, config, gh, notify, stale, TIMEOUT_S if timeout_s is None else timeout_s)
    except Exception as exc:  # advice: whatever happens here must not change the report's exit code
        _warner(gh)(f"alerts not sent: unexpected {_exception_words(exc)}")


def _warner(gh: GithubEnv) -> Callable[[str], None]:
    def warn(message: str) -> None:
        log.warning("alerts: %s", message)
        if gh.actions:
            github.warning(message, title=TITLE)
    return warn


def _deliver(outcome: Outcome, config: AlertsConfig, gh: GithubEnv, notify: Notify | None,
             stale: StaleCheck | None, timeout_s: float) -> None:
    warn = _warner(gh)
    if notify is not None and config.webhook is None:
        warn(f"--notify {notify.value} has no effect: targets.yaml sets no alerts.webhook")
    if config.webhook is None and config.heartbeat_url is None:
        return
    checked = stale() if stale is not None else None
    if checked is not None:
        outcome = with_stale(outcome, checked)
    mode = notify or Notify(config.notify)
    if config.webhook is not None:
        if mode is Notify.always or not outcome.ok:
            _post_message(outcome, config.webhook, config.webhook_format, gh, timeout_s, warn)
        else:
            log.info("alerts: every target succeeded; no webhook message (notify: failures)")
    # The heartbeat says the nightly schedule ran and all is well; a drill run proves nothing about that.
    if config.heartbeat_url is not None and outcome.report == "nightly":
        if outcome.ok and checked is not None:
            url = _resolve(config.heartbeat_url, "heartbeat ping", warn)
            if url is not None:
                problem = _send(url, None, timeout_s)
                if problem is None:
                    log.info("alerts: heartbeat ping sent")
                else:
                    warn(f"heartbeat ping failed: {problem}")
        else:
            log.info("alerts: no heartbeat ping: the nightly run did not fully succeed")


def _post_message(outcome: Outcome, webhook: str, form: str, gh: GithubEnv, timeout_s: float,
                  warn: Callable[[str], None]) -> None:
    url = _resolve(webhook, "webhook message", warn)
    if url is None:
        return
    link = run_url(gh)
    message = json_message(outcome, link, gh.repository) if form == "json" else slack_message(outcome, link)
    problem = _send(url, json.dumps(message, ensure_ascii=False).encode("utf-8"), timeout_s)
    if problem is None:
        log.info("alerts: webhook message sent (%s, %s)", form, "success" if outcome.ok else "failure")
    else:
        warn(f"webhook post failed: {problem}")
