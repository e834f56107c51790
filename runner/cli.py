"""The db-backup command line: parse, call, and turn errors into exit codes in one place.

The commands live in the cli_* modules; importing them registers them on the one app.
"""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import typer

from . import cli_checks, cli_help, cli_jobs, cli_restore, cli_retention, signals  # noqa: F401  (the command modules register their commands)
from .cli_app import app
from .errors import DbBackupError, ExitCode, TargetsInvalid, cancel_reason
from .words import plural

log = logging.getLogger(__name__)

cli_help.attach(app)


def _cancel_reason(exc: BaseException) -> str:
    # typer turns an EOF at a prompt into Abort, keeping it as the cause.
    cause = exc.__cause__ if isinstance(exc, typer.Abort) else exc
    return cancel_reason(cause) if isinstance(cause, KeyboardInterrupt) else "cancelled"


def main(argv: list[str] | None = None) -> NoReturn:
    """Console entry point: every error becomes one line on stderr and its exit code."""
    signals.install()
    verbose = "--verbose" in (argv or sys.argv) or "-v" in (argv or sys.argv)
    try:
        returned = app(args=argv, standalone_mode=False)
        # Outside standalone mode, click and typer hand back an exit code instead of exiting.
        code = returned if isinstance(returned, int) and returned else ExitCode.OK
    except TargetsInvalid as exc:
        fix = "fix it below" if len(exc.problems) == 1 else "fix each place below"
        typer.echo(f"error: {exc.path} is not valid ({plural(len(exc.problems), 'problem')}); {fix}:", err=True)
        for problem in exc.problems:
            typer.echo(f"  {exc.path}: {problem}", err=True)
        code = exc.exit_code
    except DbBackupError as exc:
        if verbose:
            log.exception("traceback")
        typer.echo(f"error: {exc}", err=True)
        code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort) as exc:
        typer.echo(f"error: {_cancel_reason(exc)}", err=True)
        code = ExitCode.CANCELLED
    except typer.TyperException as exc:  # a usage error: unknown option, missing argument, bad choice
        where = getattr(getattr(exc, "ctx", None), "command_path", "db-backup")
        if message := exc.format_message().rstrip("."):  # empty when typer has just shown the help instead
            typer.echo(f"error: {message}; see `{where} --help`", err=True)
        code = ExitCode.BAD_INPUT
    except Exception as exc:
        if verbose:
            log.exception("traceback")
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc} (run with --verbose for the traceback)", err=True)
        code = ExitCode.FAILED
    sys.exit(int(code))


if __name__ == "__main__":
    main()
