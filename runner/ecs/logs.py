"""Tail one CloudWatch log stream; trouble reading it slows or stops the tail, never the job."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from ..aws import CREDENTIAL_ERRORS, error_code, infra_error
from ..clock import Clock

if TYPE_CHECKING:
    from mypy_boto3_logs import CloudWatchLogsClient
    from mypy_boto3_logs.type_defs import GetLogEventsRequestTypeDef

log = logging.getLogger(__name__)

THROTTLE_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException", "ServiceUnavailableException"})
MAX_PAGES_PER_POLL = 20  # keep each poll short so the task's state is still checked regularly


def stream_name(prefix: str, container: str, task_id: str) -> str:
    """The awslogs driver's stream name for one container of one task."""
    return f"{prefix}/{container}/{task_id}"


class LogTail:
    """Reads new events of one stream on each poll() and hands their lines to `on_line`."""

    def __init__(
        self, client: Callable[[], CloudWatchLogsClient], group: str, stream: str, clock: Clock,
        on_line: Callable[[str], None], keep: int = 50,
    ) -> None:
        self._client = client
        self.group = group
        self.stream = stream
        self._clock = clock
        self._on_line = on_line
        self._token: str | None = None
        self._resume_at = 0.0
        self._throttle_s = 0.0
        self.seen_stream = False
        self.disabled: str | None = None
        self.last_lines: deque[str] = deque(maxlen=keep)
        self.count = 0

    def poll(self) -> int:
        """Emit the lines that arrived since the last poll; how many."""
        if self.disabled or self._clock.monotonic() < self._resume_at:
            return 0
        emitted = 0
        for _ in range(MAX_PAGES_PER_POLL):
            request: GetLogEventsRequestTypeDef = {"logGroupName": self.group, "logStreamName": self.stream, "startFromHead": True}
            if self._token:
                request["nextToken"] = self._token
            try:
                response = self._client().get_log_events(**request)
            except ClientError as exc:
                self._trouble(exc)
                return emitted
            except CREDENTIAL_ERRORS as exc:
                # Trying again every few seconds would only repeat this warning for the whole run.
                self._disable(str(infra_error("GetLogEvents", exc)))
                return emitted
            except BotoCoreError as exc:
                log.warning("reading log stream %s failed (%s); trying again later", self.stream, exc)
                return emitted
            self.seen_stream = True
            self._throttle_s = 0.0
            for event in response.get("events", []):
                for line in event.get("message", "").rstrip("\n").split("\n"):
                    self._emit(line.rstrip("\r"))
                    emitted += 1
            token = response.get("nextForwardToken")
            # CloudWatch signals the end of the stream by returning the token it was given.
            if not token or token == self._token:
                return emitted
            self._token = token
        return emitted

    def drain(self, quiet_s: float, limit_s: float) -> None:
        """After the task stopped: read until nothing new arrived for quiet_s (at most limit_s)."""
        start = last_news = self._clock.monotonic()
        while not self.disabled:
            if self.poll():
                last_news = self._clock.monotonic()
            now = self._clock.monotonic()
            if now - last_news >= quiet_s or now - start >= limit_s:
                break
            self._clock.sleep(min(1.0, quiet_s))
        if not self.seen_stream and not self.disabled:
            log.warning("log stream %s in %s never appeared; check the task definition's awslogs settings",
                        self.stream, self.group)

    def _emit(self, line: str) -> None:
        self.last_lines.append(line)
        self.count += 1
        self._on_line(line)

    def _trouble(self, exc: ClientError) -> None:
        code = error_code(exc)
        if code == "ResourceNotFoundException":
            return  # the stream appears only once the container started logging
        if code in THROTTLE_CODES:
            self._throttle_s = min(max(self._throttle_s * 2, 2.0), 60.0)
            self._resume_at = self._clock.monotonic() + self._throttle_s
            log.info("CloudWatch Logs is throttling; reading the log again in %.0fs", self._throttle_s)
            return
        self._disable(f"{code}: {exc.response.get('Error', {}).get('Message', '')}".rstrip(": "))

    def _disable(self, reason: str) -> None:
        self.disabled = reason
        log.warning("cannot read log stream %s in %s (%s); the task goes on, follow its logs in the console",
                    self.stream, self.group, reason)
