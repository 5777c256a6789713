"""Row: unreadable DICOM / NIfTI volume → the modality is missing for that sample, counted by reason."""

import json

import numpy as np

from medmix.embed import run_embed

from relhelp import VIT, full_spec, h5, write_cohort


def test_unreadable_dicom_and_nifti_are_missing_and_counted(tmp_path):
    import nibabel as nib
    vol = np.random.default_rng(1).integers(0, 4096, (24, 24, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "ok.nii.gz")
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")      # DICOM preamble, no dataset
    (tmp_path / "trunc.dcm").write_bytes(b"\0" * 128 + b"DICM")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a volume")
    (tmp_path / "bad.nii").write_bytes(b"\x5c\x01" + b"\0" * 60)                # NIfTI-sized junk header
    (tmp_path / "empty_series").mkdir()                                        # a DICOM series folder with no slice
    (tmp_path / "zero.dcm").write_bytes(b"")
    names = ["ok.nii.gz", "bad.dcm", "trunc.dcm", "bad.nii.gz", "bad.nii", "empty_series", "zero.dcm"]
    cohort = write_cohort(tmp_path / "cohort.parquet", "ct", [str(tmp_path / n) for n in names])
    s = run_embed(cohort, "ct", "vit", full_spec({**VIT, "image_size": 24}), tmp_path / "ct.h5", device="cpu",
                  progress=False)
    data, attrs = h5(tmp_path / "ct.h5")
    assert data["present"].tolist() == [True] + [False] * 6
    missing = json.loads(attrs["missing"])
    assert missing == s["missing_by_reason"] and sum(missing.values()) == 6
    assert missing.get("empty_file") == 1 and missing.get("unreadable_dicom", 0) >= 2
    assert missing.get("unreadable_volume", 0) >= 2
