"""Bad input is refused before anything is touched.

Every test runs the real CLI against a real PostgreSQL database and a real backup folder, and checks
what a user sees: exit code 2, one line naming the problem and its fix, no traceback, no password
anywhere, and nothing written, created or restored.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DB_BACKUP, PgCluster, fill_small, run_cli, write_targets

# A password in two pieces: neither piece may ever be printed, not even with --verbose.
PIECE_A, PIECE_B = "Qx7Hidden", "Zk9Piece"


@dataclass(frozen=True)
class World:
    pg: PgCluster
    dbname: str
    backups: Path  # holds the one real backup a restore would use, were its input accepted
    targets: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def world(pg: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A database with a real backup of it in a folder store; dropped afterwards."""
    root = tmp_path_factory.mktemp("bad-input")
    dbname = f"t_{uuid.uuid4().hex[:10]}"
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        fill_small(pg, dbname, "kept")
        backups = root / "backups"
        targets = write_targets(root / "targets.yaml", pg, {"production": dbname}, f"file://{backups}")
        env = {"TEST_PG_PASSWORD": pg.password, "DB_BACKUP_TARGETS": str(targets)}
        made = run_cli("backup", "app", "production", env=env, timeout=120)
        assert made.returncode == 0, made.stderr
        yield World(pg, dbname, backups, targets, env)
    finally:
        pg.drop(dbname)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An empty backup folder: a command refused for bad input must leave it empty."""
    folder = tmp_path / "store"
    folder.mkdir()
    return folder


def targets_file(tmp_path: Path, world: World, store: Path, extra: str = "", target_extra: str = "") -> Path:
    """A valid targets.yaml whose one target is the world's database and whose storage is `store`."""
    return write_targets(tmp_path / "targets.yaml", world.pg, {"production": world.dbname}, f"file://{store}",
                         extra=extra, target_extra=target_extra)


def backup(targets: Path | str, world: World, *, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("--targets", str(targets), "backup", "app", "production", env={**world.env, **(env or {})}, cwd=cwd, timeout=120)


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def line_of(text: str, needle: str, occurrence: int) -> int:
    """1-based number of the n-th line of `text` that contains `needle`."""
    return [n for n, line in enumerate(text.splitlines(), 1) if needle in line][occurrence - 1]


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2, nothing on stdout, and one line on stderr, `error: ...`, with these words; returns it."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def assert_invalid_targets(result: subprocess.CompletedProcess[str], where: str, *problems: str) -> None:
    """Exit 2 and the targets.yaml report: one header line, then one indented line per problem."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    header, *rest = result.stderr.splitlines()
    count = "1 problem); fix it below:" if len(rest) == 1 else f"{len(rest)} problems); fix each place below:"
    assert header == f"error: {where} is not valid ({count}", header
    assert rest and all(line.startswith(f"  {where}: ") for line in rest), result.stderr
    for problem in problems:
        assert any(problem in line for line in rest), (problem, rest)
    assert "Traceback" not in result.stderr


def test_with_good_input_the_same_command_does_write_a_backup(tmp_path: Path, world: World, store: Path) -> None:
    """The control: what the tests below refuse would otherwise have written into the folder."""
    result = backup(targets_file(tmp_path, world, store), world)
    assert result.returncode == 0, result.stderr
    assert any(name.endswith(".dump.json") for name in files_in(store))


# --- targets.yaml: a key given twice ----------------------------------------------------------


def test_a_database_name_given_twice_is_refused_naming_its_line(tmp_path: Path, world: World, store: Path) -> None:
    """`name:` twice under a target's database: YAML would silently back up the second database."""
    path = targets_file(tmp_path, world, store)
    text = path.read_text().replace(f"      name: {world.dbname}\n", f"      name: {world.dbname}\n      name: postgres\n")
    path.write_text(text)
    assert_invalid_targets(backup(path, world), str(path),
                           f"line {line_of(text, 'name:', 2)}: duplicate key 'name' (first on line {line_of(text, 'name:', 1)}); remove one of them")
    assert files_in(store) == []


def test_an_env_given_twice_in_a_target_is_refused_naming_its_line(tmp_path: Path, world: World, store: Path) -> None:
    """`env:` twice in one target: YAML would silently make it another environment's target."""
    path = targets_file(tmp_path, world, store, target_extra="env: beta")
    text = path.read_text()
    assert_invalid_targets(backup(path, world), str(path), f"line {line_of(text, 'env:', 2)}: duplicate key 'env'")
    assert files_in(store) == []


def test_defaults_given_twice_is_refused_naming_its_line(tmp_path: Path, world: World, store: Path) -> None:
    """`defaults:` twice: YAML would silently send the backups to the second block's storage."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = targets_file(tmp_path, world, store)
    path.write_text(path.read_text() + f"defaults:\n  storage: file://{elsewhere}\n")
    text = path.read_text()
    assert_invalid_targets(backup(path, world), str(path), f"line {line_of(text, 'defaults:', 2)}: duplicate key 'defaults'")
    assert files_in(store) == [] and files_in(elsewhere) == []


def test_a_key_given_twice_in_the_targets_sent_by_the_runner_is_refused(tmp_path: Path, world: World, store: Path) -> None:
    """The JSON a Fargate task gets (DB_BACKUP_TARGETS_JSON) is checked the same way."""
    sent = (f'{{"version": 1, "defaults": {{"storage": "file://{store}", "storage": "file://{store}"}},'
            ' "environments": {"production": {}}, "targets": []}')
    result = backup(targets_file(tmp_path, world, store), world, env={"DB_BACKUP_TARGETS_JSON": sent})
    assert_invalid_targets(result, "the targets sent by the runner (DB_BACKUP_TARGETS_JSON)", "line 1: duplicate key 'storage'")
    assert files_in(store) == []


# --- targets.yaml: the file itself ------------------------------------------------------------


def test_a_targets_file_that_is_not_utf8_is_refused(tmp_path: Path, world: World, store: Path) -> None:
    """A Latin-1 file: the byte, its line, and to save it as UTF-8."""
    path = targets_file(tmp_path, world, store)
    path.write_bytes(path.read_bytes().replace(b"version: 1\n", b"version: 1\n# caf\xe9\n"))
    assert_refused(backup(path, world), f"targets file {path} is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8")
    assert files_in(store) == []


def test_a_folder_given_as_the_targets_file_is_refused(tmp_path: Path, world: World, store: Path) -> None:
    """--targets pointing at a folder says to point it at the file."""
    targets_file(tmp_path, world, store)
    assert_refused(backup(tmp_path, world), f"targets file {tmp_path} is a folder; point --targets (or DB_BACKUP_TARGETS) at")
    assert files_in(store) == []


def test_a_targets_file_over_1_mib_is_refused_before_it_is_read(tmp_path: Path, world: World, store: Path) -> None:
    """An 8 GiB file (sparse) is refused by its size at once, never read into memory."""
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:
        handle.truncate(8 * 1024**3)
    result = run_cli("--targets", str(path), "backup", "app", "production", env=world.env, timeout=30)
    assert_refused(result, f"targets file {path} is 8,589,934,592 bytes, more than the 1 MiB a targets file may be")
    assert files_in(store) == []


def run_cli_without_root_powers(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """run_cli, but a root user loses the capabilities that let root read any file (as in CI containers)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: root reads every file")
        prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    full_env.update(env)
    return subprocess.run([*prefix, DB_BACKUP, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120, check=False)


def test_an_unreadable_targets_file_is_refused(tmp_path: Path, world: World, store: Path) -> None:
    """./targets.yaml without read permission: permission denied, and how to fix it."""
    path = targets_file(tmp_path, world, store)
    path.chmod(0)
    env = {k: v for k, v in world.env.items() if k != "DB_BACKUP_TARGETS"}
    result = run_cli_without_root_powers("backup", "app", "production", env=env, cwd=tmp_path)
    assert_refused(result, "targets file targets.yaml cannot be read (permission denied); make it readable by this user")
    assert files_in(store) == []


def test_an_unreadable_targets_file_named_by_option_is_refused(tmp_path: Path, world: World, store: Path) -> None:
    """--targets naming a file without read permission: refused as a usage error."""
    path = targets_file(tmp_path, world, store)
    path.chmod(0)
    result = run_cli_without_root_powers("--targets", str(path), "backup", "app", "production", env=world.env, cwd=tmp_path)
    assert_refused(result, f"'{path}' is not readable")
    assert files_in(store) == []


# --- targets.yaml: lock_wait_timeout ----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "target_extra", "problem"),
    [
        ("lock_wait_timeout: 0s", "", "defaults.lock_wait_timeout: '0s' is out of range; write from 1s to 24h, e.g. 5m"),
        ("", "lock_wait_timeout: 25h", "targets[0] (app/production).lock_wait_timeout: '25h' is out of range"),
        ("", "lock_wait_timeout: 5x", "targets[0] (app/production).lock_wait_timeout: '5x' is not a duration; write e.g. 30s, 5m or 2h"),
        ("", "lock_wait_timeout: 300", "targets[0] (app/production).lock_wait_timeout: 300 has no unit"),
    ],
    ids=["zero", "over-a-day", "no-duration", "no-unit"],
)
def test_a_bad_lock_wait_timeout_is_refused_with_its_place(tmp_path: Path, world: World, store: Path,
                                                           extra: str, target_extra: str, problem: str) -> None:
    """A lock wait of 0 would wait forever, over a day is a mistake, and a number needs its unit."""
    path = targets_file(tmp_path, world, store, extra=extra, target_extra=target_extra)
    assert_invalid_targets(backup(path, world), str(path), problem)
    assert files_in(store) == []


# --- the environment --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("DB_BACKUP_PART_SIZE_MB", "abc", "DB_BACKUP_PART_SIZE_MB='abc' is not valid: it must be a whole number; fix or unset it"),
        ("DB_BACKUP_RESTORE_MODE", "fast", "DB_BACKUP_RESTORE_MODE='fast' is not valid: it must be auto, stream or parallel; fix or unset it"),
        ("DB_BACKUP_SWAP_WAIT_S", "-1", "DB_BACKUP_SWAP_WAIT_S='-1' is not valid: it must be more than 0; fix or unset it"),
        ("DB_BACKUP_RESTORE_MODE", "p" * 39 + "TAIL" * 50, "DB_BACKUP_RESTORE_MODE='" + "p" * 39 + "T'... is not valid"),
    ],
    ids=["not-a-number", "not-a-choice", "not-positive", "long-value-cut-short"],
)
def test_a_bad_setting_names_its_environment_variable(tmp_path: Path, world: World, store: Path, name: str, value: str, words: str) -> None:
    """One line naming the DB_BACKUP_* variable, what it must be, and to fix or unset it."""
    result = backup(targets_file(tmp_path, world, store), world, env={name: value})
    assert_refused(result, words)
    assert "TAILTAIL" not in result.stderr
    assert files_in(store) == []


def test_a_duration_too_long_for_a_computer_is_refused(tmp_path: Path, world: World, store: Path) -> None:
    """--timeout beyond what a date can hold is bad input, not a crash."""
    result = run_cli("--targets", str(targets_file(tmp_path, world, store)), "backup", "app", "production",
                     "--timeout", "99999999999999d", env=world.env, timeout=60)
    assert_refused(result, "duration '99999999999999d' is too long")
    assert files_in(store) == []


# --- --to-url: never a password ---------------------------------------------------------------

URLS = {
    "port-not-a-number": ("postgresql://{user}:{a}{b}@{host}:notaport/{db}", "--to-url port is not a port number"),
    "slash-in-password": ("postgresql://{user}:{a}/{b}@{host}:{port}/{db}", "percent-encode them as %2F and %40"),
    "digits-slash-in-password": ("postgresql://{user}:5432/{a}{b}@{host}:{port}/{db}", "percent-encode them as %2F and %40"),
    "at-sign-in-password": ("postgresql://{user}:{a}@{b}@{host}:{port}/{db}", "percent-encode them as %2F and %40"),
    "bad-percent-encoding": ("postgresql://{user}:{a}%zz{b}@{host}:{port}/{db}", "--to-url is not a valid PostgreSQL URL; write it as"),
    "space-in-password": ("postgresql://{user}:{a} {b}@{host}:{port}/{db}", "--to-url is not a valid PostgreSQL URL; write it as"),
    "unclosed-ipv6": ("postgresql://{user}:{a}{b}@[::1/{db}", "--to-url is not a valid PostgreSQL URL; write it as"),
    "unknown-parameter": ("postgresql://{user}:{a}{b}@{host}:{port}/{db}?bogus=1", "--to-url is not a valid PostgreSQL URL; write it as"),
    "bad-sslmode": ("postgresql://{user}@{host}:{port}/{db}?password={a}{b}&sslmode={a}", "--to-url sslmode is not one of"),
    "two-hosts": ("postgresql://{user}:{a}{b}@{host},{host}:{port}/{db}", "--to-url names several servers (host)"),
}


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
@pytest.mark.parametrize("case", list(URLS))
def test_a_malformed_url_never_shows_its_password(world: World, case: str, verbose: bool, tmp_path: Path) -> None:
    """Refused before anything runs, without a piece of the password, even in --verbose tracebacks."""
    template, words = URLS[case]
    pg = world.pg
    url = template.format(user=pg.user, a=PIECE_A, b=PIECE_B, host=pg.host, port=pg.port, db=f"{world.dbname}_copy")
    before = (files_in(world.backups), world.pg.databases())
    argv = ["restore", "app", "--from", "production", "--to-url", url]
    scratch = tmp_path / "tmp"  # where a restore would put its work folder or a passfile
    scratch.mkdir()
    result = run_cli(*(["--verbose", *argv] if verbose else argv), env={**world.env, "TMPDIR": str(scratch)}, timeout=60)
    assert list(scratch.iterdir()) == []
    output = result.stdout + result.stderr
    assert PIECE_A not in output and PIECE_B not in output, output
    if verbose:  # debug logs and the traceback, then the error
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors == [result.stderr.splitlines()[-1]] and words in errors[0], result.stderr
    else:
        assert_refused(result, words)
    assert (files_in(world.backups), world.pg.databases()) == before
