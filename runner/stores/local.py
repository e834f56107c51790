"""A local folder as the backup store: each dump is written to a flocked hidden partial, then hard-linked."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ..catalog import DUMP_SUFFIX, ID_RE, backup_key
from ..errors import IdTaken, InfraError, JobFailed, NoBackup
from ..filelocks import remove_if_unlocked
from ..manifest import Manifest
from . import READ_CHUNK, Upload

if TYPE_CHECKING:
    from .s3_tags import Lifecycle

log = logging.getLogger(__name__)


def _local_error(action: str, path: Path, exc: OSError, hint: str = "check the folder's free space and permissions") -> InfraError:
    """An OSError on the backup folder: storage, not the job, failed (exit 3), so say where and why."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return InfraError(f"{action} {path} failed: {reason}; {hint}, then run again")


# link() fails so on filesystems without hard links (some FUSE, SMB and FAT mounts).
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV)
_HARD_LINK_HINT = ("check the folder's permissions; its filesystem must support hard links, "
                   "which db-backup uses so that no backup is ever overwritten")


# A staging name is flocked a moment after it is created; one older than this with a free lock is a
# dead run's (or an older db-backup's, which never locked them), never a live run's.
STAGING_LEFTOVER_AGE_S = 60.0
_RESERVED_PARTIAL = re.compile(rf"^\.{ID_RE.pattern.strip('^$')}{re.escape(DUMP_SUFFIX)}\.partial$")


def _reserved_name(final: Path) -> Path:
    """The partial that reserves a backup id: deterministic, so two runs of one id meet on it."""
    return final.with_name(f".{final.name}.partial")


class _FileUpload:
    """A hidden partial file, flocked while written, linked to its final name only when complete.

    The id is reserved by the partial's name (`.ID.dump.partial`): it is created under a unique
    staging name, locked, then link()ed to that name, which fails if it exists; so the reserved
    name is never seen unlocked, and a free lock on it means its run is gone.
    """

    def __init__(self, final: Path) -> None:
        self._final = final
        self._tmp = _reserved_name(final)
        staging = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            if self._taken():
                raise IdTaken(f"{final} already exists")
            self._file = staging.open("xb")
        except OSError as exc:
            raise _local_error("creating", staging, exc) from exc
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._claim(staging)
        except BaseException as exc:
            self._file.close()
            staging.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                # Fail before the dump, not after it: complete() needs link() too.
                hint = _HARD_LINK_HINT if exc.errno in _NO_HARD_LINKS else "check the folder's free space and permissions"
                raise _local_error("starting", final, exc, hint) from exc
            raise
        try:
            staging.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s (%s); the next backup removes it", staging, exc.strerror or exc)
        if self._taken():  # a run of this id completed just before the reservation
            self.abort()
            raise IdTaken(f"{final} already exists")

    def _taken(self) -> bool:
        return os.path.lexists(self._final) or os.path.lexists(f"{self._final}.json")

    def _claim(self, staging: Path) -> None:
        for _ in range(3):
            try:
                os.link(staging, self._tmp)
                return
            except FileExistsError:
                outcome = remove_if_unlocked(self._tmp)
                if outcome == "live":
                    raise IdTaken(f"{self._final} is being written by another backup") from None
                if outcome == "removed":
                    log.info("removed %s, left by a backup of the same id that did not finish", self._tmp)
        raise IdTaken(f"{self._final} is contended by other backups")

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()  # a full disk must not also keep the partial's gigabytes
            raise _local_error("writing", self._tmp, exc) from exc

    def complete(self) -> None:
        linking = False
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            linking = True
            # link() refuses to replace: an existing backup is never overwritten.
            os.link(self._tmp, self._final)
        except FileExistsError as exc:
            self.abort()
            raise JobFailed(f"{self._final} already exists; another backup took this id, run again") from exc
        except OSError as exc:
            # ENOSPC at flush/fsync, EPERM from link(), EIO: never leave the partial behind.
            self.abort()
            if linking and exc.errno in _NO_HARD_LINKS:
                raise _local_error("completing", self._final, exc, _HARD_LINK_HINT) from exc
            raise _local_error("completing", self._final, exc) from exc
        except BaseException:
            self.abort()
            raise
        try:
            self._tmp.unlink()  # still locked: see remove_if_unlocked
        except OSError as exc:
            # The backup itself is complete; the partial is a second name for the same bytes, and
            # with its lock free the next backup removes it.
            log.warning("could not remove %s (%s); the next backup removes it", self._tmp, exc.strerror or exc)
        finally:
            self._close()

    def _close(self) -> None:
        try:
            if not self._file.closed:
                self._file.close()  # may fail to flush (ENOSPC): the descriptor is closed regardless
        except OSError:
            pass

    def abort(self) -> None:
        """Delete the partial, then close it (releasing the id); never raises, so the error that led here is the one reported."""
        try:
            self._tmp.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s (%s); the next backup removes it", self._tmp, exc.strerror or exc)
        self._close()


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.expires_itself = False
        self.url = f"file://{root}"

    def key(self, identifier: str, env: str, backup_id: str) -> str:
        return backup_key("", identifier, env, backup_id)

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def start_upload(self, key: str, storage_class: str, tags: Mapping[str, str] | None = None) -> Upload:
        return _FileUpload(self.root / key)

    def clean_leftovers(
        self, identifier: str, env: str, now: datetime, abandoned: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """Remove hidden partial files of this target whose lock is free: runs that died mid-backup."""
        folder = self.root / identifier / env
        removed: list[str] = []
        try:
            children = sorted(folder.iterdir()) if folder.is_dir() else []
        except OSError as exc:
            log.warning("could not look for leftovers in %s (%s)", folder, exc.strerror or exc)
            return removed
        for child in children:
            if not (child.name.startswith(".") and child.name.endswith(".partial")):
                continue
            try:
                info = child.lstat()
                if not stat.S_ISREG(info.st_mode):
                    continue
                if not _RESERVED_PARTIAL.match(child.name) and time.time() - info.st_mtime < STAGING_LEFTOVER_AGE_S:
                    continue
                if remove_if_unlocked(child) != "removed":
                    continue
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("could not remove the leftover %s (%s); delete it by hand", child, exc.strerror or exc)
                continue
            log.info("removed %s, a partial file left by a backup that did not finish", child)
            removed.append(str(child))
        return removed

    def put_manifest(self, manifest: Manifest, tags: Mapping[str, str] | None = None) -> None:
        self.put_text(manifest.key + ".json", manifest.to_json(), action="writing the manifest")

    # A folder has no object tags and no lifecycle: `db-backup prune` applies the policy to it.
    def get_tags(self, key: str) -> dict[str, str]:
        return {}

    def set_tags(self, key: str, tags: Mapping[str, str]) -> None:
        return None

    def lifecycle(self, identifier: str, env: str) -> Lifecycle | None:
        return None

    def delete(self, key: str) -> bool:
        """Remove one object of a backup (prune); False when it was already gone."""
        path = self.root / key
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _local_error("deleting", path, exc) from exc
        return True

    def put_text(self, key: str, text: str, tags: Mapping[str, str] | None = None, *, action: str = "writing") -> None:
        path = self.root / key
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            with tmp.open("x", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())  # the commit marker: on disk before it has its name
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _local_error(action, path, exc) from exc

    def read(self, key: str) -> Iterator[bytes]:
        path = self.root / key
        try:
            handle = path.open("rb")
        except FileNotFoundError as exc:
            raise NoBackup(f"{path} does not exist") from exc
        except OSError as exc:
            raise _local_error("opening", path, exc) from exc
        with handle:
            try:
                while chunk := handle.read(READ_CHUNK):
                    yield chunk
            except OSError as exc:
                raise _local_error("reading", path, exc) from exc

    def read_text(self, key: str) -> str | None:
        path = self.root / key
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _local_error("reading", path, exc) from exc

    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        path = self.root / prefix
        folder = path if prefix.endswith("/") else path.parent
        found = []
        try:
            if not folder.is_dir():
                return []
            for child in folder.iterdir():
                key = str(child.relative_to(self.root))
                if child.name.startswith(".") or not key.startswith(prefix):
                    continue
                try:
                    info = child.stat()
                except FileNotFoundError:
                    continue  # removed while listing
                if stat.S_ISREG(info.st_mode):
                    found.append((key, info.st_size))
        except OSError as exc:
            raise _local_error("listing", folder, exc) from exc
        return found
