"""The typer application: its options, the state every command shares, and where a job runs."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import typer
from typer.core import TyperGroup

from .errors import BadInput, Cancelled, cancel_reason

# The rest is imported where a command needs it: `--help` and a small job should not wait for
# pydantic, psycopg or boto3 to load when they do not use them.
if TYPE_CHECKING:
    from .services import Services
    from .settings import Settings
    from .stores import BackupStore
    from .targets import Registry, Target

log = logging.getLogger(__name__)


# The order `--help` lists them in: the day-to-day jobs first, then checks, then the workflows' own.
COMMAND_ORDER = ("targets", "validate", "matrix", "list", "backup", "restore", "rollback", "drill", "verify", "history",
                 "status", "ack", "retention", "pin", "unpin", "prune", "report", "workflows")


class _Commands(TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: COMMAND_ORDER.index(name) if name in COMMAND_ORDER else len(COMMAND_ORDER))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            # Left alone, typer turns it into a bare exit code 130, which main() would read as success.
            raise Cancelled(cancel_reason(exc)) from exc


app = typer.Typer(
    cls=_Commands, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Backups of PostgreSQL databases to S3 or a folder, and safe restores.",
)


class Executor(StrEnum):
    local = "local"
    ecs = "ecs"


@dataclass
class State:
    targets: Path
    verbose: bool
    settings: Settings
    targets_origin: str = ""  # where `targets` came from, for the missing-file message

    _registry: Registry | None = field(default=None, repr=False)

    def registry(self) -> Registry:
        """targets.yaml, read and validated once per command (an ECS run needs it twice)."""
        if self._registry is None:
            from .targets import load_registry, parse_registry

            if self.settings.targets_json:
                self._registry = parse_registry(self.settings.targets_json, "the targets sent by the runner (DB_BACKUP_TARGETS_JSON)")
            else:
                self._registry = load_registry(self.targets, self.targets_origin)
        return self._registry

    def services(self) -> Services:
        from . import github
        from .aws import AwsClients
        from .clock import SystemClock
        from .services import Services
        from .settings import GithubEnv

        gh = GithubEnv()
        return Services(
            settings=self.settings, clock=SystemClock(), aws=AwsClients(),
            on_secret=github.add_mask if gh.actions else (lambda _secret: None),
        )


def state_of(ctx: typer.Context) -> State:
    state: State = ctx.obj
    return state


class Stored(NamedTuple):
    """One target, the services of this run, and the store its backups are in."""

    target: Target
    services: Services
    store: BackupStore


def stored(ctx: typer.Context, identifier: str, env: str) -> Stored:
    state = state_of(ctx)
    target = state.registry().get(identifier, env)
    services = state.services()
    return Stored(target, services, services.store(target))


def who() -> str:
    """Who runs this command, as records name them: the GitHub actor, else the local user."""
    import getpass

    from .settings import GithubEnv

    return GithubEnv().actor or getpass.getuser()


def package_version() -> str:
    """The installed package's version; in a source tree that is not installed, pyproject.toml's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("db-backup")
    except PackageNotFoundError:
        import tomllib

        from . import __version__

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return __version__


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"db-backup {package_version()}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    targets: Annotated[Path | None, typer.Option("--targets", envvar="DB_BACKUP_TARGETS", help="Path of targets.yaml.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging and tracebacks.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", "-V", is_eager=True, callback=_show_version, help="Print db-backup's version and exit.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr, force=True,
        format="%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%SZ",
    )
    logging.Formatter.converter = time.gmtime
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .settings import load_settings

    settings = load_settings()
    ctx.obj = State(targets=targets or settings.targets, verbose=verbose, settings=settings,
                    targets_origin=_targets_origin(ctx, targets or settings.targets))


def _targets_origin(ctx: typer.Context, path: Path) -> str:
    """Where the targets path came from: --targets wins over DB_BACKUP_TARGETS, which wins over the default."""
    # By name: typer brings its own copy of click, whose ParameterSource is not click's.
    source = getattr(ctx.get_parameter_source("targets"), "name", "")
    if source == "COMMANDLINE":
        return f"from --targets {path}"
    if source == "ENVIRONMENT":
        return f"from DB_BACKUP_TARGETS={path}"
    return "the default path, targets.yaml in the current folder"




def executor_for(target: Target, chosen: Executor | None) -> str:
    executor = chosen.value if chosen else target.executor
    if executor == "ecs" and target.ecs is None:
        raise BadInput(f"--executor ecs needs defaults.ecs in targets.yaml for {target.name}")
    return executor


