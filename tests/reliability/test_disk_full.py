"""Row: disk full while writing a cache → a clear error, no partial file under the final name.

Two ways: a fault-injecting writer (always), and a real 16 KiB tmpfs (when the test may mount one,
i.e. as root)."""

import errno
import json
import subprocess

import h5py
import pytest

from medmix import cli
from medmix.encoders import cache

from relhelp import BERT, full_spec, leftovers, write_cohort

TEXTS = [f"note number {i} about the chest" for i in range(40)]


def test_injected_disk_full_gives_a_clear_error_and_no_partial_cache(tmp_path, monkeypatch, capsys):
    cohort = write_cohort(tmp_path / "cohort.parquet", "notes", TEXTS)
    real = h5py.File

    class FullDisk:  # writes the first dataset for real, then the device is full
        def __init__(self, *a, **k):
            self.f = real(*a, **k)
            self.n = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def create_dataset(self, *a, **k):
            self.n += 1
            if self.n > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.create_dataset(*a, **k)

    monkeypatch.setattr(cache.h5py, "File", FullDisk)
    out = tmp_path / "emb" / "bert.h5"
    rc = cli.main(["embed", "--cohort", str(cohort), "--modality", "notes", "--encoder", "bert", "--out", str(out),
                   "--job", json.dumps({"spec": full_spec(BERT)}), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert f"{out}: disk full while writing it" in err and "Free space" in err
    assert not out.exists() and leftovers(tmp_path) == []
    monkeypatch.undo()                                  # space again: the rerun resumes from the checkpoint
    rc = cli.main(["embed", "--cohort", str(cohort), "--modality", "notes", "--encoder", "bert", "--out", str(out),
                   "--job", json.dumps({"spec": full_spec(BERT)}), "--quiet"])
    assert rc == 0 and out.exists()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["resumed_batches"] > 0


def test_real_full_tmpfs_gives_a_clear_error_and_no_partial_cache(tmp_path, capsys):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        cohort = write_cohort(tmp_path / "cohort.parquet", "notes", TEXTS * 4)
        out = mnt / "bert.h5"
        spec = full_spec({**BERT, "arch": {**BERT["arch"], "hidden_size": 64}})  # 160 × 64 float32 = 40 KiB
        rc = cli.main(["embed", "--cohort", str(cohort), "--modality", "notes", "--encoder", "bert", "--out", str(out),
                       "--job", json.dumps({"spec": spec}), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 1 and "Traceback" not in err and "disk full while writing" in err, err[-2000:]
        assert not out.exists() and leftovers(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
