"""Row: an embed job killed with SIGKILL halfway → the rerun resumes from its last checkpoint and the
final file equals an uninterrupted run's (through the CLI, as a rule runs it)."""

import json
import os
import signal
import time

from medmix import cli

from conftest import slow_embed
from relhelp import BERT, assert_same_cache, full_spec, write_cohort


def test_sigkilled_embed_resumes_and_equals_an_uninterrupted_run(tmp_path, capsys):
    cohort = write_cohort(tmp_path / "cohort.parquet", "notes", [f"note {i} " + "word " * (i % 13) for i in range(96)])
    spec = json.dumps({"spec": full_spec({**BERT, "batch_size": 4})})
    args = ["embed", "--cohort", cohort, "--modality", "notes", "--encoder", "bert", "--job", spec, "--quiet",
            "--checkpoint-every", "1"]
    assert cli.main([str(a) for a in args] + ["--out", str(tmp_path / "ref.h5")]) == 0
    ref = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = tmp_path / "out.h5"
    proc = slow_embed(args + ["--out", out], gate=tmp_path / "never-opened", hold_after=6)   # held after 6 batches
    deadline, chunks = time.time() + 90, []
    while time.time() < deadline and len(chunks) < 5 and proc.poll() is None:
        time.sleep(0.05)
        chunks = list(tmp_path.glob(".out.h5.ckpt-*/chunk-*.npz"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(chunks) >= 5, "the job ended before it could be killed: " + proc.stdout.read()[-2000:]
    assert not out.exists()                                        # nothing that looks complete
    assert cli.main([str(a) for a in args] + ["--out", str(out)]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 5 <= again["resumed_batches"] < ref["batches"]
    assert_same_cache(tmp_path / "ref.h5", out)                    # bit-identical, same attributes
    assert not list(tmp_path.glob(".out.h5.ckpt-*"))              # checkpoint removed once the cache is in place
