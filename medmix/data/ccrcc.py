"""MMIST-ccRCC adapter: a ccRCC folder → a manifest (then the generic manifest loader).

The exact release layout of MMIST-ccRCC (618 patients from TCGA-KIRC and CPTAC-CCRCC) is not
available to us, so the adapter reads this documented folder (docs/datasets.md), with the GDC
column names both source projects use:

    clinical.csv      one row per patient: case_id (or patient_id / submitter_id), baseline
                      variables (age_at_diagnosis, gender, stage, grade, ...), vital_status
                      (Alive/Dead), days_to_death, days_to_last_follow_up, optional split
    genomics.csv      one row per patient: case_id + numeric columns (mutations, CNV, expression)
    CT/<case_id>/     a NIfTI file (.nii/.nii.gz) or a DICOM series directory (*.dcm)
    MRI/<case_id>/    same
    WSI/<case_id>*.{h5,pt,npy,...}  precomputed tile features of the slide (the first file by name
                                    when a case has several; encoder kind `features`)

Tasks: `os12` (binary: death within `horizon_months`; alive past it = 0; censored before it =
unknown) and `os` (survival: time in months, event = death). Leakage: every outcome or follow-up
column (vital status, days_to_*, death, follow-up, recurrence, progression, survival) is removed
from the clinical input; the inputs are baseline data only.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import polars as pl

from medmix.data.common import check_unique, count, log, new_report, read_table, source
from medmix.data.manifest import FEATURE_SUFFIXES
from medmix.io import MedmixError, atomic_path

TASKS = {"os12": {"type": "binary", "columns": ["os12"]},
         "os": {"type": "survival", "columns": ["os_time", "os_event"]}}
INPUTS = {"clinical": "json", "genomics": "json", "ct": "volume", "mri": "volume", "wsi": "features"}
_ID = ("case_id", "patient_id", "submitter_id")
_OUTCOME = re.compile(r"vital|days_to|death|dead|follow|recurren|progress|surviv|^os|^pfs|^dfs|event|status|split",
                      re.IGNORECASE)
DAYS_PER_MONTH = 30.4375


def _id_col(df: pl.DataFrame, path: Path) -> str:
    for c in _ID:
        if c in df.columns:
            return c
    raise MedmixError(f"{path}: no patient id column (one of {', '.join(_ID)})")


def _num(v: str | None, where: str, field: str) -> float | None:
    v = (v or "").strip()
    if v in ("", "'--", "--", "NA", "nan", "Not Reported"):
        return None
    try:
        return float(v)
    except ValueError:
        raise MedmixError(f"{where}: field '{field}' is {v!r}, expected a number of days") from None


def _volume(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    nii = sorted(p for p in folder.iterdir() if p.name.lower().endswith((".nii", ".nii.gz")))
    if nii:
        return str(nii[0])
    if any(p.suffix.lower() == ".dcm" for p in folder.iterdir()):
        return str(folder)
    series = sorted(d for d in folder.iterdir() if d.is_dir() and any(p.suffix.lower() == ".dcm" for p in d.iterdir()))
    return str(series[0]) if series else None


def write_manifest(root: str | Path, out: str | Path, horizon_months: float = 12,
                   optional_tables=("genomics", "ct", "mri", "wsi")) -> tuple[Path, dict]:
    """Write the manifest of a ccRCC folder; return (path, adapter counts)."""
    root, out = Path(root), Path(out)
    optional = set(optional_tables or ())
    rep = new_report()
    clin_p = source(root / "clinical.csv", "clinical", "ccRCC clinical table", optional - {"clinical"}, rep)
    clin = read_table(clin_p, report=rep)
    idc = _id_col(clin, clin_p)
    for c in ("vital_status", "days_to_death", "days_to_last_follow_up"):
        if c not in clin.columns:
            raise MedmixError(f"{clin_p}: missing column '{c}' (GDC survival fields)")
    ids = [(v or "").strip() for v in clin[idc].to_list()]
    for i, v in enumerate(ids):
        if not v:
            raise MedmixError(f"{clin_p}: row {i + 1} (line {i + 2}): field '{idc}' is empty")
    check_unique(ids, str(clin_p), idc, rows=list(range(1, len(ids) + 1)))
    count(rep, "counts", "clinical_rows", len(ids))
    baseline = [c for c in clin.columns if c != idc and not _OUTCOME.search(c)]
    rep["clinical_inputs"] = baseline
    rep["clinical_columns_removed_as_outcome"] = [c for c in clin.columns if c != idc and _OUTCOME.search(c)]

    rows = []
    for i, r in enumerate(clin.iter_rows(named=True)):
        where = f"{clin_p}: row {i + 1} (line {i + 2})"
        status = (r["vital_status"] or "").strip().lower()
        if status not in ("alive", "dead", ""):
            raise MedmixError(f"{where}: field 'vital_status' is {r['vital_status']!r}, expected Alive or Dead")
        d_death = _num(r["days_to_death"], where, "days_to_death")
        d_fu = _num(r["days_to_last_follow_up"], where, "days_to_last_follow_up")
        if status == "dead" and d_death is None:
            raise MedmixError(f"{where}: field 'days_to_death' is empty for a patient whose vital_status is Dead")
        days = d_death if status == "dead" else d_fu
        event = None if status == "" or days is None else int(status == "dead")
        months = None if days is None or event is None else days / DAYS_PER_MONTH
        if months is None:
            os12 = None
        elif event == 1 and months <= horizon_months:
            os12 = 1
        elif months >= horizon_months:
            os12 = 0
        else:
            os12 = None  # censored before the horizon: unknown
        clinical = {c: r[c] for c in baseline if (r[c] or "").strip() not in ("", "'--", "--")}
        row = {"sample_id": ids[i], "patient_id": ids[i], "split": (r.get("split") or "").strip(),
               "os12": "" if os12 is None else str(os12),
               "os_time": "" if months is None else f"{months:.4f}", "os_event": "" if event is None else str(event),
               "clinical": json.dumps(clinical) if clinical else ""}
        rows.append(row)
    count(rep, "counts", "os12_unknown_censored_before_horizon", sum(r["os12"] == "" for r in rows))

    gen_p = source(root / "genomics.csv", "genomics", "ccRCC genomics table", optional, rep)
    if gen_p:
        gen = read_table(gen_p, report=rep)
        gid = _id_col(gen, gen_p)
        gids = [(v or "").strip() for v in gen[gid].to_list()]
        check_unique(gids, str(gen_p), gid, rows=list(range(1, len(gids) + 1)))
        feats = [c for c in gen.columns if c != gid]
        by = {}
        for i, r in enumerate(gen.iter_rows(named=True)):
            vals = {c: _num(r[c], f"{gen_p}: row {i + 1} (line {i + 2})", c) for c in feats}
            by[gids[i]] = {c: v for c, v in vals.items() if v is not None}
        count(rep, "counts", "genomics_rows_without_clinical", len(set(by) - set(ids)))
    else:
        by = {}
    for r in rows:
        r["genomics"] = json.dumps(by[r["sample_id"]]) if by.get(r["sample_id"]) else ""

    for table, folder in (("ct", "CT"), ("mri", "MRI")):
        d = source(root / folder, table, f"ccRCC {folder} folder", optional, rep)
        for r in rows:
            v = _volume(d / r["sample_id"]) if d else None
            r[table] = str(Path(v).resolve()) if v else ""
    d = source(root / "WSI", "wsi", "ccRCC WSI feature folder", optional, rep)
    for r in rows:
        hits = sorted(p for p in d.glob(f"{r['sample_id']}*") if p.name.lower().endswith(FEATURE_SUFFIXES)) if d else []
        r["wsi"] = str(hits[0].resolve()) if hits else ""
    for m in ("genomics", "ct", "mri", "wsi"):
        count(rep, "counts", f"{m}_available", sum(bool(r[m]) for r in rows))

    df = pl.DataFrame(rows, schema={k: pl.String for k in rows[0]} if rows else None)
    with atomic_path(out) as tmp:
        df.write_csv(tmp)
    log.info("ccrcc: manifest %s with %d patients", out, df.height)
    adapter = {k: rep[k] for k in ("counts", "clinical_inputs", "clinical_columns_removed_as_outcome")}
    adapter["manifest"] = str(out)
    adapter["warnings"] = rep["warnings"]
    return out, adapter


# ------------------------------------------------------------------ synthetic fixture
def _nifti(path: Path, shape=(8, 8, 4), offset: int = 0) -> None:
    """A minimal valid NIfTI-1 (.nii) volume: 348-byte header, 4 bytes extension flag, int16 data."""
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, *shape, 1, 1, 1, 1)
    struct.pack_into("<h", hdr, 70, 4)        # datatype int16
    struct.pack_into("<h", hdr, 72, 16)       # bitpix
    struct.pack_into("<8f", hdr, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", hdr, 108, 352)     # vox_offset
    hdr[344:348] = b"n+1\x00"
    data = (np.arange(np.prod(shape)) * (1 + offset) % 997).astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(hdr) + b"\x00" * 4 + data)


def _dicom_series(folder: Path, pixels: np.ndarray) -> None:
    """A valid MR DICOM series: one file per slice of `pixels` (S, H, W) uint16, positions along z."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid(entropy_srcs=[str(folder.parent.name)])
    for k, sl in enumerate(pixels):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(folder), str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID, series
        ds.Modality, ds.InstanceNumber, ds.ImagePositionPatient = "MR", len(pixels) - k, [0.0, 0.0, float(k)]
        ds.Rows, ds.Columns = sl.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = sl.astype(np.uint16).tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)


def _wsi_features(out: Path, pid: str, tiles: np.ndarray, fmt: str) -> None:
    """Slide tile features as extractors write them: TRIDENT/CLAM-style .h5 (`features`, `coords`), .npy, .pt."""
    (out / "WSI").mkdir(exist_ok=True)
    if fmt == "h5":
        import h5py
        with h5py.File(out / "WSI" / f"{pid}.h5", "w") as f:
            f["features"] = tiles
            f["coords"] = np.arange(2 * len(tiles), dtype=np.int64).reshape(-1, 2) * 256
    elif fmt == "pt":
        import torch
        torch.save(torch.from_numpy(tiles), out / "WSI" / f"{pid}.pt")
    else:
        np.save(out / "WSI" / f"{pid}.npy", tiles)


def synth(out: str | Path, n: int = 40, seed: int = 0) -> dict:
    """A ccRCC folder of `n` patients (half TCGA-KIRC, half CPTAC-CCRCC ids). Planted: a
    `cause_of_death` and the follow-up columns in clinical.csv (outcome: never an input);
    every 5th patient without genomics, every 3rd without CT (the others a NIfTI volume), every
    4th without MRI (the others a valid MR DICOM series of 3 slices), every 6th without WSI
    features (the others [tiles, 16] tile features as .h5, .npy or .pt in turn). The stage, which
    drives the outcome, also shifts the MRI intensities and the tile features (a signal to learn)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    clin, gen = [], []
    for i in range(n):
        pid = f"TCGA-B0-{5000 + i}" if i % 2 == 0 else f"C3L-{i:05d}"
        stage = int(rng.integers(1, 5))
        dead = rng.random() < 0.15 + 0.15 * stage
        days = int(rng.integers(30, 1500))
        clin.append({"case_id": pid, "project_id": "TCGA-KIRC" if i % 2 == 0 else "CPTAC-3",
                     "age_at_diagnosis": str(int(rng.integers(40, 85))), "gender": "male" if i % 3 else "female",
                     "ajcc_pathologic_stage": f"Stage {'I' * min(stage, 3) if stage < 4 else 'IV'}",
                     "tumor_grade": f"G{int(rng.integers(1, 5))}",
                     "vital_status": "Dead" if dead else "Alive",
                     "days_to_death": str(days) if dead else "'--",
                     "days_to_last_follow_up": "'--" if dead else str(days),
                     "cause_of_death": "Cancer Related" if dead else "'--"})
        if i % 5:
            gen.append({"case_id": pid, "VHL_mut": str(int(rng.random() < 0.5)), "PBRM1_mut": str(int(rng.random() < 0.4)),
                        "chr3p_cnv": f"{rng.normal(-0.5, 0.2):.3f}"})
        if i % 3:
            _nifti(out / "CT" / pid / "ct.nii", offset=stage)
        if i % 4:
            _dicom_series(out / "MRI" / pid / "series1",
                          rng.integers(0, 400, size=(3, 16, 16)) + 150 * stage)
        if i % 6:
            tiles = (rng.normal(size=(int(rng.integers(3, 9)), 16)) + 0.5 * stage).astype(np.float32)
            _wsi_features(out, pid, tiles, ("h5", "npy", "pt")[i % 3])
    pl.DataFrame(clin).write_csv(out / "clinical.csv")
    pl.DataFrame(gen).write_csv(out / "genomics.csv")
    return {"patients": n, "genomics": len(gen)}
