"""Durable local spool: finished images wait on local disk until their store holds them.

Why: an S3 outage, or a run killed mid-upload, must never cost an image that was already
generated. Each labelled image and its sidecar are written here first (temp file + fsync +
rename, the sidecar last as the commit marker), then uploaded, and the entry is removed only
once the store holds the sidecar. Whatever is left (S3 down past the upload retries, a killed
process) is uploaded first by the next run of the same store, so it is never generated again.

Layout: `<root>/<store-id>/<key>` and `<key>.json`, one directory per store URL, so two
stores never mix; `<store-id>` is the URL made filename-safe plus a hash of it, and
`<root>/<store-id>.url` holds the URL itself, so that a process that did not write a spool (a
GPU worker draining its machine's spools, `Spool.all_under`) knows where it goes.
Root: `$ZPIPE_SPOOL`, else `$ZPIPE_HOME/spool`, else `<cache>/spool` (`$ZPIPE_CACHE`, else
`~/.cache/zpipe`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.core.errors import StoreError, ZpipeError
from tasks.core.settings import env_name, env_raw
from tasks.store.keys import SIDECAR_SUFFIX
from tasks.store.objects import TMP_MARK, LocalStore, validate_key
from zengine.tiny import default_cache_root

SPOOL_ENV = env_name("spool")
RESERVE_BYTES = 16 * 1024 * 1024  # left free: logs and the Prefect database often share the disk
STALE_AFTER_S = 3600  # an uncommitted file this old belongs to a dead writer, not a live one
URL_SUFFIX = ".url"  # `<root>/<store-id>.url`: the store URL of the spool beside it
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class SpoolError(ZpipeError):
    """The local spool cannot take an image (disk full, no permission)."""


class SpoolEntryError(SpoolError):
    """A committed spool entry is corrupt (bad sidecar, size mismatch): never uploaded."""


@dataclass(frozen=True)
class SpooledImage:
    """One committed, checked spool entry: the exact bytes to upload and their sidecar."""

    key: str
    data: bytes
    sidecar: bytes


def default_spool_root() -> Path:
    """`$ZPIPE_SPOOL`, else `$ZPIPE_HOME/spool`, else `<cache>/spool`; always absolute."""
    if spool := env_raw("spool"):
        return Path(spool).expanduser().absolute()
    if home := env_raw("home"):
        return (Path(home).expanduser() / "spool").absolute()
    return (default_cache_root() / "spool").absolute()


def store_id(store_url: str) -> str:
    """A directory name for one store URL: readable, and unique by its hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", store_url).strip("-.")
    if len(readable) > 60:  # keep the end (bucket/prefix or the last folders), from a word start
        readable = readable[-60:].partition("-")[2] or readable[-60:]
    return f"{readable}-{hashlib.sha256(store_url.encode('utf-8')).hexdigest()[:12]}"


class Spool:
    """Finished images of one store, kept on local disk until that store has them.

    `reserve_bytes` stay free on the spool's disk (checked before each write); None turns the
    check off, leaving the write's own ENOSPC as the only guard.
    """

    def __init__(self, root: Path, store_url: str, reserve_bytes: int | None = RESERVE_BYTES):
        self.store_url = store_url
        self.dir = Path(root).expanduser().absolute() / store_id(store_url)
        self.reserve_bytes = reserve_bytes
        self._files = LocalStore(self.dir)  # atomic writes (temp + fsync + rename), temp files hidden

    @classmethod
    def for_store(cls, store_url: str) -> Spool:
        """The spool of `store_url` under the default root."""
        return cls(default_spool_root(), store_url)

    @classmethod
    def all_under(cls, root: Path | None = None) -> list[Spool]:
        """Every spool under `root` (default: the default root) that records its store URL."""
        root = Path(root or default_spool_root()).expanduser().absolute()
        spools = []
        for marker in sorted(root.glob(f"*{URL_SUFFIX}")) if root.is_dir() else []:
            try:
                url = marker.read_text(encoding="utf-8").strip()
            except OSError:
                continue
            spool = cls(root, url)
            if url and spool.dir.name + URL_SUFFIX == marker.name:  # not a stray or renamed file
                spools.append(spool)
        return spools

    # -- writing --------------------------------------------------------------------------

    def put(self, key: str, data: bytes, sidecar: bytes) -> None:
        """Keep an image and its sidecar, durably; the sidecar is written last (the commit marker).

        Raises SpoolError when the disk is full, naming the directory, the bytes needed and the
        fix; no partial entry stays behind. Putting an entry that is already committed with the
        same sidecar writes nothing (an upload retry re-spools the same image).
        """
        validate_key(key)
        if self._committed_sidecar(key, len(data)) == sidecar:
            return
        needed = len(data) + len(sidecar)
        self.check_room(needed, key)
        self._unlink(key + SIDECAR_SUFFIX)  # an older version of the entry is uncommitted first
        try:
            self._write(key, data, needed)
            self._write(key + SIDECAR_SUFFIX, sidecar, needed)
        except SpoolError:
            self._unlink(key)  # never an image without its commit marker
            raise
        _fsync_dir((self.dir / key).parent)  # make both renames durable too
        self._record_url()

    def check_room(self, needed: int, key: str | None = None) -> None:
        """SpoolError unless `needed` bytes fit with `reserve_bytes` still free afterwards."""
        if self.reserve_bytes is None:
            return
        free = self.free_bytes()
        if free < needed + self.reserve_bytes:
            raise SpoolError(self._full_message(needed, key, free))

    def free_bytes(self) -> int:
        """Free bytes (for this user) on the spool's file system."""
        here = self.dir
        while not here.exists() and here != here.parent:
            here = here.parent
        return shutil.disk_usage(here).free

    def _write(self, key: str, data: bytes, needed: int) -> None:
        try:
            self._files.put(key, data, overwrite=True)
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
                raise SpoolError(self._full_message(needed, key, self.free_bytes())) from exc
            raise SpoolError(f"cannot write {key!r} into the local spool {self.dir}: {cause or exc}; "
                             f"check that the directory is writable, or set {SPOOL_ENV} to one "
                             "that is") from exc

    def _full_message(self, needed: int, key: str | None, free: int) -> str:
        what = f"image {key!r}" if key else "the next image"
        left = (f" and zpipe leaves {_size(self.reserve_bytes)} of them to other programs"
                if self.reserve_bytes else "")
        return (f"the local spool {self.dir} is out of disk space: {what} needs {_size(needed)}, "
                f"{_size(free)} are free{left} (every finished image is written there before its "
                f"upload). Free some space on that disk, or set {SPOOL_ENV} to a directory on a "
                "disk with room, then run the same week again: nothing was half-written, and "
                "images already spooled or stored are not made again")

    # -- reading --------------------------------------------------------------------------

    def committed(self) -> list[str]:
        """Keys of the committed entries (their sidecar is written), in key order."""
        names = set(self._keys())
        return [name[:-len(SIDECAR_SUFFIX)] for name in sorted(names)
                if name.endswith(SIDECAR_SUFFIX)]

    def load(self, key: str) -> SpooledImage | None:
        """A committed entry, checked; None if it is gone (another run uploaded it meanwhile).

        Raises SpoolEntryError for an orphan sidecar, bad JSON, or an image whose size is not
        the one its sidecar records: such an entry must never reach the store.
        """
        try:
            sidecar = self._files.get(key + SIDECAR_SUFFIX)
        except StoreError:
            return None
        try:
            data = self._files.get(key)
        except StoreError:
            raise SpoolEntryError(f"spool entry {key!r} in {self.dir}: sidecar without its image") from None
        try:
            record = json.loads(sidecar)
            recorded_key, size = record["key"], record["output"]["bytes"]
        except (ValueError, TypeError, KeyError) as exc:
            raise SpoolEntryError(f"spool entry {key!r} in {self.dir}: unreadable sidecar "
                                  f"({type(exc).__name__}: {exc})") from None
        if recorded_key != key:
            raise SpoolEntryError(f"spool entry {key!r} in {self.dir}: its sidecar is for "
                                  f"{recorded_key!r}")
        if size != len(data):
            raise SpoolEntryError(f"spool entry {key!r} in {self.dir}: image is {len(data)} bytes, "
                                  f"its sidecar says {size}")
        return SpooledImage(key=key, data=data, sidecar=sidecar)

    # -- removing -------------------------------------------------------------------------

    def remove(self, key: str) -> None:
        """Drop an entry: the sidecar first, so a crash half-way leaves it uncommitted."""
        self._unlink(key + SIDECAR_SUFFIX)
        self._unlink(key)

    def sweep(self, now: float | None = None) -> list[str]:
        """Delete what dead writers left: uncommitted images, temp files, empty directories.

        Only files older than STALE_AFTER_S go: a younger one may belong to a run writing now.
        Returns one line per deleted file, saying why.
        """
        now = time.time() if now is None else now
        names = set(self._keys())
        swept = []
        for name in sorted(names):
            if name.endswith(SIDECAR_SUFFIX) or name + SIDECAR_SUFFIX in names:
                continue
            if self._older(self.dir / name, now):
                self._unlink(name)
                swept.append(f"spool entry {name!r} in {self.dir}: half-written (no sidecar), "
                             "discarded; the next run makes it again")
        for dirpath, dirs, files in os.walk(self.dir, topdown=False):
            for name in files:
                path = Path(dirpath) / name
                if TMP_MARK in name and self._older(path, now):
                    path.unlink(missing_ok=True)
                    swept.append(f"temporary file {path} left by an interrupted write, discarded")
            if not dirs and not files and Path(dirpath) != self.dir and self._older(Path(dirpath), now):
                with contextlib.suppress(OSError):  # a writer may have just put a file there
                    Path(dirpath).rmdir()
        return swept

    # -- helpers --------------------------------------------------------------------------

    def _keys(self) -> list[str]:
        return self._files.list() if self.dir.is_dir() else []

    def _committed_sidecar(self, key: str, size: int) -> bytes | None:
        """The sidecar of a committed entry whose image has `size` bytes, else None."""
        try:
            if (self.dir / key).stat().st_size != size:
                return None
        except OSError:  # not there (or not a file): nothing committed
            return None
        try:
            return self._files.get(key + SIDECAR_SUFFIX)
        except StoreError:
            return None

    def _record_url(self) -> None:
        """`<root>/<store-id>.url`, once: the store this spool's entries go to. Best effort,
        after an entry is committed: the entry is safe without it (a campaign of the same store
        still uploads it); only a worker's drain would not find it until a later put writes it."""
        marker = self.dir.parent / (self.dir.name + URL_SUFFIX)
        if marker.is_file():
            return
        with contextlib.suppress(StoreError):  # a full disk: the entry is committed, the next put tries again
            LocalStore(self.dir.parent).put(marker.name, self.store_url.encode("utf-8"), overwrite=True)

    def _unlink(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)

    @staticmethod
    def _older(path: Path, now: float) -> bool:
        try:
            return now - path.stat().st_mtime > STALE_AFTER_S
        except FileNotFoundError:
            return False


def _size(n: int) -> str:
    """Bytes, exact, with a readable MiB figure beside big ones."""
    return f"{n} bytes" + (f" ({n / 2**20:.1f} MiB)" if n >= 2**20 else "")


def _fsync_dir(path: Path) -> None:
    """Flush a directory's entries (the renames into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
