"""GPU slots for several GPU jobs on one machine: a lock file per GPU, taken with `flock`.

Snakemake counts GPUs (`--resources gpu=N`) but does not say which card a job should use, so two
jobs can land on the same one. With `MEDMIX_GPU_SLOTS=N` (or `--gpu-slots N`), `medmix embed` and
`medmix train` take the first free slot of N before anything touches CUDA, and expose only that
card to themselves (`CUDA_VISIBLE_DEVICES`). The lock belongs to the process's open file: the
kernel releases it when the process exits in any way (success, exception, SIGKILL, OOM kill), so
no slot can leak and there is nothing to clean up.

Policy when every slot is taken: queue, like a scheduler would. The job polls every second and
logs the holders (pids) once a minute; it waits without limit unless `MEDMIX_GPU_WAIT` says how
many seconds (0 = fail at once), after which it fails with a `MedmixError` naming the lock
directory and the pids holding the slots. With Snakemake's `--resources gpu=N` equal to the slot
count and the embed jobs declaring `gpu=1`, no job ever waits; one waits when something outside
the run holds a card (another run, a notebook using the same lock directory).

Environment (a flag of the CLI wins over its variable):
  MEDMIX_GPU_SLOTS     number of slots; unset or 0 = no allocation (SLURM already assigns GPUs)
  MEDMIX_GPU_DEVICES   device ids of the slots, comma-separated (default 0..N-1), e.g. "0,2,3"
  MEDMIX_GPU_LOCK_DIR  directory of the lock files, shared by every job of the machine
                       (default <tmp>/medmix-gpu-slots)
  MEDMIX_GPU_WAIT      seconds to wait for a free slot (default: no limit; 0 = fail at once)
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from medmix.io import MedmixError

log = logging.getLogger(__name__)

DEFAULT_WAIT_S = float("inf")
_held: list["GpuSlot"] = []  # keeps the lock files open (hence locked) until the process exits


@dataclass
class GpuSlot:
    index: int        # slot number, 0..n-1
    device: str       # what CUDA_VISIBLE_DEVICES is set to
    path: Path        # the lock file
    fd: int           # open, flock'ed descriptor: closing it (or dying) frees the slot

    def release(self) -> None:
        """Free the slot now (normally unnecessary: process exit frees it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self in _held:
            _held.remove(self)


def default_lock_dir() -> Path:
    return Path(os.environ.get("MEDMIX_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / "medmix-gpu-slots")


def slot_devices(n: int, devices: str | None = None) -> list[str]:
    """Device id of each of the n slots: `devices` ("0,2,3"), else $MEDMIX_GPU_DEVICES, else 0..n-1."""
    spec = devices if devices is not None else os.environ.get("MEDMIX_GPU_DEVICES", "")
    if not spec.strip():
        return [str(i) for i in range(n)]
    ids = [d.strip() for d in spec.split(",") if d.strip()]
    if len(ids) != n:
        raise MedmixError(f"MEDMIX_GPU_DEVICES={spec!r} lists {len(ids)} devices but {n} GPU slots were asked for "
                          f"(MEDMIX_GPU_SLOTS / --gpu-slots): give one device id per slot")
    return ids


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return None
        raise
    # record the holder for the messages of waiting jobs (the lock itself is the flock, not this text)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
    return fd


def acquire(n: int, lock_dir: str | os.PathLike | None = None, devices: str | None = None,
            wait_s: float | None = None, poll_s: float = 1.0) -> GpuSlot:
    """Take the first free of `n` GPU slots; held until `release()` or the end of the process."""
    if n < 1:
        raise MedmixError(f"GPU slots: asked for {n} slots; give at least 1 (or leave MEDMIX_GPU_SLOTS unset)")
    ids = slot_devices(n, devices)
    d = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MedmixError(f"GPU slots: cannot create the lock directory {d} ({e}); set MEDMIX_GPU_LOCK_DIR") from None
    if wait_s is None:
        raw = os.environ.get("MEDMIX_GPU_WAIT", "").strip()
        try:
            wait_s = float(raw) if raw else DEFAULT_WAIT_S
        except ValueError:
            raise MedmixError(f"MEDMIX_GPU_WAIT={raw!r} is not a number of seconds") from None
    paths = [d / f"gpu{i}.lock" for i in range(n)]
    t0 = last_note = time.monotonic()
    while True:
        for i, p in enumerate(paths):
            try:
                fd = _try_lock(p)
            except OSError as e:
                raise MedmixError(f"GPU slots: cannot open or lock {p} ({e})") from None
            if fd is not None:
                slot = GpuSlot(i, ids[i], p, fd)
                _held.append(slot)
                return slot
        now = time.monotonic()
        holders = "; ".join(f"slot {i} (device {ids[i]}): {_holder(p)}" for i, p in enumerate(paths))
        if now - t0 >= wait_s:
            raise MedmixError(f"GPU slots: all {n} slots in {d} are taken ({holders}); waited {wait_s:.0f} s "
                              f"(MEDMIX_GPU_WAIT). Run fewer GPU jobs at once (snakemake --resources gpu={n}) "
                              f"or raise MEDMIX_GPU_SLOTS if the machine has more GPUs")
        if now - last_note >= 60:
            log.info("waiting for a free GPU slot in %s: %s", d, holders)
            last_note = now
        time.sleep(poll_s)


def claim_for_process(n: int | None = None, device: str | None = None) -> GpuSlot | None:
    """Called by the CLI before torch is imported: with slots configured, take one and set
    CUDA_VISIBLE_DEVICES to its device. Returns None (and changes nothing) when no slots are
    configured or the job runs on the CPU (`--device cpu`)."""
    if n is None:
        raw = os.environ.get("MEDMIX_GPU_SLOTS", "").strip()
        try:
            n = int(raw) if raw else 0
        except ValueError:
            raise MedmixError(f"MEDMIX_GPU_SLOTS={raw!r} is not an integer: give the number of GPUs") from None
    if n <= 0:
        return None
    if device is not None and not device.startswith("cuda"):
        log.info("GPU slots: --device %s, no slot taken", device)
        return None
    if device not in (None, "cuda", "cuda:0"):
        raise MedmixError(f"--device {device} with GPU slots: the job sees only its slot's GPU, as cuda:0; "
                          f"drop --device or use cuda")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise MedmixError("GPU slots: CUDA was initialised before the slot was taken; CUDA_VISIBLE_DEVICES "
                          "would have no effect (a bug: claim the slot before using torch)")
    slot = acquire(n)
    os.environ["CUDA_VISIBLE_DEVICES"] = slot.device
    log.info("GPU slot %d/%d taken (%s): CUDA_VISIBLE_DEVICES=%s", slot.index, n, slot.path, slot.device)
    return slot
