"""Row: empty or whitespace-only text → modality missing (`empty_text`); bytes that are not UTF-8 in a
raw notes table → decoded with replacement characters and counted in cohort.json, never a crash."""

import csv
import gzip
import json
import os

from medmix.data.mimic4 import build_cohort
from medmix.embed import run_embed

from relhelp import BERT, full_spec, h5, write_cohort


def test_empty_and_whitespace_texts_are_missing_and_counted(tmp_path):
    values = ["pleural effusion", "", "   \n\t ", "no acute findings", None, "\u00a0"]
    cohort = write_cohort(tmp_path / "cohort.parquet", "notes", values)
    s = run_embed(cohort, "notes", "bert", full_spec(BERT), tmp_path / "n.h5", device="cpu", progress=False)
    data, attrs = h5(tmp_path / "n.h5")
    assert data["present"].tolist() == [True, False, False, True, False, False]
    assert json.loads(attrs["missing"]) == s["missing_by_reason"] == {"empty_text": 3}


def test_non_utf8_note_bytes_are_decoded_with_replacement_and_counted(tmp_path, tiny_raw):
    src = tiny_raw / "note" / "radiology.csv.gz"
    with gzip.open(src, "rt", newline="") as f:
        rows = list(csv.reader(f))
    text_col = rows[0].index("text")
    buf = [",".join(rows[0]).encode()]
    for i, r in enumerate(rows[1:]):
        cells = [c.encode() for c in r]
        if i == 0:  # latin-1 and a stray continuation byte inside the first note
            cells[text_col] = cells[text_col] + b" caf\xe9 \x9d MARKERBYTES"
        buf.append(b",".join(b'"' + c.replace(b'"', b'""') + b'"' for c in cells))
    (tmp_path / "note").mkdir()
    with gzip.open(tmp_path / "note" / "radiology.csv.gz", "wb") as f:
        f.write(b"\n".join(buf) + b"\n")
    clean, _ = build_cohort(tiny_raw)
    co, rep = build_cohort(tiny_raw, note_root=tmp_path)          # no crash
    assert rep["counts"]["non_utf8_cells"] == {"radiology.csv.gz": 1}
    assert any("not UTF-8" in w for w in rep["warnings"])
    notes = [n for n in co["notes"].to_list() if n and "MARKERBYTES" in n]
    if notes:  # the damaged note is before the prediction time of some stay: it is kept, with U+FFFD
        assert "caf\ufffd \ufffd MARKERBYTES" in notes[0]
    assert co.height == clean.height and co["ehr"].to_list() == clean["ehr"].to_list()
    assert os.path.exists(src)


def test_non_utf8_bytes_in_openi_and_manifest_tables_are_decoded_and_counted(tmp_path):
    """The same rule in every loader that reads report text from CSV (shared reader, data/common.py)."""
    from medmix.data import manifest, openi
    from medmix.synth_layouts import synth_openi
    root = tmp_path / "openi"
    synth_openi(root, n=12, seed=0, layout="csv")
    reports = root / "indiana_reports.csv"
    reports.write_bytes(reports.read_bytes().replace(b"Cough for 1 days.", b"Cough caf\xe9 \x9d for 1 days.", 1))
    co, rep = openi.build_cohort(root)                                  # no crash
    assert rep["counts"]["non_utf8_cells"] == {"indiana_reports.csv": 1}
    assert any("not UTF-8" in w for w in rep["warnings"]) and co.height == 12

    m = tmp_path / "m.csv"
    rows = [f"s{i},p{i},{i % 2},text {i}".encode() for i in range(20)]
    rows[3] = b"s3,p3,1,caf\xe9 note"
    m.write_bytes(b"sample_id,patient_id,y,note\n" + b"\n".join(rows) + b"\n")
    co, rep = manifest.build_cohort(m, tasks={"y": {"type": "binary", "columns": ["y"]}})
    assert rep["counts"]["non_utf8_cells"] == {"m.csv": 1}
    assert co.filter(co["sample_id"] == "s3")["note"][0] == "caf\ufffd note"

    from medmix.data import ccrcc
    root = tmp_path / "ccrcc"
    ccrcc.synth(root, n=8, seed=0)
    clin = root / "clinical.csv"
    lines = clin.read_bytes().split(b"\n")
    header = lines[0].split(b",")
    cells = lines[2].split(b",")
    free = next(i for i, h in enumerate(header) if h not in (b"case_id", b"vital_status", b"days_to_death",
                                                              b"days_to_last_follow_up", b"split"))
    cells[free] = b"caf\xe9"                                       # the row stays valid; one text cell gets a bad byte
    lines[2] = b",".join(cells)
    clin.write_bytes(b"\n".join(lines))
    _, adapter = ccrcc.write_manifest(root, tmp_path / "cc.csv")
    assert adapter["counts"]["non_utf8_cells"] == {"clinical.csv": 1}
