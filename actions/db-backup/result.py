"""Write one JSON record of a backup/restore/drill result (run by the db-backup action, also on failure).

The scheduled workflow uploads one such file per matrix job; `db-backup report` turns them into
one table. Inputs come from the environment (see the "Record the result" step of action.yml).
Standard library only: it must work even when installing db-backup failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _last_error(path: str) -> str:
    if not path or not Path(path).is_file():
        return ""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors[-1] if errors else "")[:500]


def _size(python: str, identifier: str, env: str, backup_id: str) -> int | None:
    """Size of the new backup from its manifest (best effort: the report shows '-' without it)."""
    if not (python and backup_id):
        return None
    try:
        done = subprocess.run(
            [python, "-m", "runner.cli", "list", identifier, env, "--json", "--limit", "10"],
            capture_output=True, text=True, timeout=120, check=False,
        )
        for entry in json.loads(done.stdout or "[]"):
            if entry.get("id") == backup_id and isinstance(entry.get("size_bytes"), int):
                return int(entry["size_bytes"])
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return None


def main() -> int:
    command = _env("IN_COMMAND")
    result = _env("RUN_RESULT") or ("success" if _env("RUN_OUTCOME") == "success" else "failure")
    error = _last_error(_env("STDERR_FILE"))
    if not error and _env("VALIDATE_OUTCOME") == "failure":
        error = "invalid input: see the job's annotations"
    elif not error and _env("RUN_OUTCOME") in ("", "skipped") and result != "success":
        error = "db-backup did not run: see the job log"
    started = _env("STARTED_AT")
    finished = int(time.time())
    server, repo, run_id = _env("GITHUB_SERVER_URL"), _env("GITHUB_REPOSITORY"), _env("GITHUB_RUN_ID")
    record = {
        "identifier": _env("IN_IDENTIFIER"),
        "env": _env("IN_ENV"),
        "command": command,
        "from": _env("IN_FROM") or None,
        "result": result,
        "exit_code": int(_env("EXIT_CODE")) if _env("EXIT_CODE").isdigit() else None,
        "backup_id": _env("BACKUP_ID") or None,
        "backup_uri": _env("BACKUP_URI") or None,
        "task_arn": _env("TASK_ARN") or None,
        "logs_url": _env("LOGS_URL") or None,
        "size_bytes": _size(_env("PY"), _env("IN_IDENTIFIER"), _env("IN_ENV"), _env("BACKUP_ID"))
        if command == "backup" and result == "success" else None,
        "duration_s": finished - int(started) if started.isdigit() else None,
        "finished_at": finished,
        "error": error or None,
        "run_url": f"{server}/{repo}/actions/runs/{run_id}" if server and repo and run_id else None,
    }
    path = Path(_env("RESULT_FILE"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"result of {record['command']} {record['identifier']}/{record['env']}: {result} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
