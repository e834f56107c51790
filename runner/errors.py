"""The one exception hierarchy of db-backup and the exit codes it maps to."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    INFRA = 3
    TIMEOUT = 4
    CANCELLED = 130


class DbBackupError(Exception):
    """Base error: its message is one sentence a user can act on."""

    exit_code: ExitCode = ExitCode.FAILED


class JobFailed(DbBackupError):
    """The backup or restore itself failed (pg_dump, pg_restore, checksum, task exit)."""

    exit_code = ExitCode.FAILED


class StaleBackups(JobFailed):
    """`status` found targets whose newest backup is too old."""


class BadInput(DbBackupError):
    exit_code = ExitCode.BAD_INPUT


class TargetsInvalid(BadInput):
    """targets.yaml has problems; each one carries its place."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        count = len(problems)
        super().__init__(
            f"{path} has {count} problem{'s' if count != 1 else ''}: "
            + "; ".join(problems)
        )


class UnknownTarget(BadInput):
    pass


class RestoreRefused(BadInput):
    pass


class NoBackup(BadInput):
    pass


class ArchiveLayoutUnknown(DbBackupError):
    """A dump's layout is not one db-backup can index; pg_restore still reads it, only slower."""


class InfraError(DbBackupError):
    """AWS denied or failed, a task could not start, storage unreachable."""

    exit_code = ExitCode.INFRA


class TaggingDenied(InfraError):
    """S3 refused a write because it carried tags the caller may not set (s3:PutObjectTagging)."""


class TimedOut(DbBackupError):
    exit_code = ExitCode.TIMEOUT


class Cancelled(DbBackupError):
    """The outcome of an interrupted job, after its cleanup: what the CLI reports and exits 130 with."""

    exit_code = ExitCode.CANCELLED


class Interrupted(KeyboardInterrupt):
    """Raised by the SIGINT/SIGTERM/SIGHUP handler; its message names the signal.

    A BaseException like KeyboardInterrupt on purpose: botocore wraps any Exception raised during
    a request into a retried HTTPClientError, so a signal that was an Exception vanished whenever it
    landed mid-request, and psycopg cancels the running query only on a KeyboardInterrupt.
    """


def cancel_reason(exc: KeyboardInterrupt) -> str:
    """`cancelled by SIGTERM` and the like; a bare KeyboardInterrupt came from Python's own SIGINT handling."""
    return str(exc) if isinstance(exc, Interrupted) and str(exc) else "cancelled by SIGINT"


class IdTaken(JobFailed):
    """Another backup holds or wrote this backup id; the backup tries the next id of the same second."""
