"""Fault injection for tests/test_slurm.py, loaded by every Python process whose PYTHONPATH holds this
directory; it does nothing unless MEDMIX_FAULTS names a directory (the test's), so the SLURM jobs
of the fault test run the project's code unchanged until the moment the test wants to break them.

- `medmix embed --encoder bert_head`, first attempt: checkpoints after every batch, then hangs after
  its second batch (writes `embed.held`) until the test cancels it with scancel. Later attempts
  run normally and resume from the checkpoint.
- `medmix train --method early_concat`, first attempt: writes `train.held` and hangs at start, as
  a job stuck on a file system does, until SLURM kills it at its (lowered) time limit.

The first attempt is told from the next by a marker file the hook writes in MEDMIX_FAULTS."""

import os
import sys
import time

_DIR = os.environ.get("MEDMIX_FAULTS")
_ARGV = sys.orig_argv


def _is(cmd: str, flag: str, value: str) -> bool:
    a = _ARGV
    return "medmix" in a and cmd in a and flag in a and a[a.index(flag) + 1] == value


def _hang(marker: str, seconds: float = 600) -> None:
    open(os.path.join(_DIR, marker), "w").close()
    t0 = time.time()
    while time.time() < t0 + seconds:
        time.sleep(0.2)


def _first(name: str) -> bool:
    path = os.path.join(_DIR, name + ".started")
    if os.path.exists(path):
        return False
    open(path, "w").close()
    return True


if _DIR and _is("embed", "--encoder", "bert_head") and _first("embed"):
    sys.argv += ["--checkpoint-every", "1"]
    from medmix.encoders import text

    _real, _calls = text._HFTextBase.forward, [0]

    def _forward(self, rows):
        _calls[0] += 1
        if _calls[0] > 2:
            _hang("embed.held")
        return _real(self, rows)

    text._HFTextBase.forward = _forward
elif _DIR and _is("train", "--method", "early_concat") and _first("train"):
    _hang("train.held")
