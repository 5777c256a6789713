"""Small I/O helpers shared by every stage: atomic writes, stable hashes, JSON."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


class MedmixError(Exception):
    """A user-facing error: the CLI prints its message (which names file, row and field) and exits 1."""


def from_dict_strict(cls, d: dict, what: str):
    """A dataclass from a dict; a key that is not a field is an error naming it (never dropped)."""
    import dataclasses
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise MedmixError(f"{what}: unknown key(s) {unknown} (known: {', '.join(sorted(names))})")
    return cls(**d)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds.

    A crash, a full disk or an exception leaves no partial file under the final name; a full disk
    (or quota) becomes a MedmixError naming the file.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as e:
        if not _disk_full(e):
            raise
        raise MedmixError(f"{final}: disk full while writing it ({str(e).splitlines()[0][:200]}); nothing was "
                          f"written under this name. Free space on {final.parent} (or point the output "
                          "elsewhere) and rerun") from None
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def output_lock(final: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock (fcntl.flock on `.{name}.lock` beside `final`) while a job writes `final`.

    A second run of the same target waits, with a log line, until the first has finished; the
    lock dies with its holder, SIGKILL included, so a crashed job never blocks a rerun.
    """
    import fcntl
    import logging
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = final.parent / f".{final.name}.lock"
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.getLogger("medmix.io").warning("%s is being written by another process (lock %s); waiting "
                                                   "for it to finish", final, lock)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _disk_full(e: OSError) -> bool:
    """ENOSPC/EDQUOT, also when a library (h5py) reports it only in the message."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e) \
        or "errno = 28" in str(e) or "Disk quota exceeded" in str(e)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically, with sorted keys so that equal content gives equal bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of dict key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def hash_strings(values: list[str | None], n: int = 16) -> str:
    """Order-sensitive hash of a list of optional strings (None distinct from "")."""
    h = hashlib.sha256()
    for v in values:
        h.update(b"\x00N" if v is None else b"\x01" + v.encode("utf-8", "surrogatepass") + b"\x00")
    return h.hexdigest()[:n]


def file_sha256(path: str | os.PathLike, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]
