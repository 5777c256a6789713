"""Row: corrupt image file, zero-byte image, image path that does not exist → the sample's image
modality is missing, counted per reason in the embed log and the cache; the run continues."""

import json

import numpy as np
from PIL import Image

from relhelp import VIT, full_spec, h5, medmix, write_cohort


def test_corrupt_zero_byte_and_missing_images_are_missing_counted_and_the_run_continues(tmp_path):
    rng = np.random.default_rng(0)
    good = []
    for i in range(3):
        p = tmp_path / f"good{i}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(p)
        good.append(str(p))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)    # PNG signature, broken body
    zero = tmp_path / "zero.jpg"
    zero.write_bytes(b"")
    nope = tmp_path / "does_not_exist.png"
    values = [[good[0]], [str(corrupt)], [str(zero)], [str(nope)], [good[1], str(corrupt)], [good[2]], None]
    cohort = write_cohort(tmp_path / "cohort.parquet", "cxr", values)
    out = tmp_path / "emb" / "vit.h5"
    p = medmix("embed", "--cohort", cohort, "--modality", "cxr", "--encoder", "vit", "--out", out,
               "--job", json.dumps({"spec": full_spec(VIT)}), "--quiet")
    log = p.stdout + p.stderr                                       # what the rule writes to its log
    assert p.returncode == 0, log
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    want = {"unreadable_image": 1, "empty_file": 1, "file_not_found": 1}
    assert summary["missing_by_reason"] == want                    # counted per reason in the embed log
    data, attrs = h5(out)
    assert json.loads(attrs["missing"]) == want                    # ... and in the cache
    # a sample with one bad and one good image keeps the good one; the bad-only ones are missing
    assert data["present"].tolist() == [True, False, False, False, True, True, False]
    assert not data["emb"][~data["present"]].any() and np.isfinite(data["emb"]).all()
