"""OpenI loader: both layouts on synthetic fixtures, errors naming file/row/field, the real CSVs."""

import csv
import json
from collections import Counter

import polars as pl
import pytest

from medmix.data import cohort as C
from medmix.data.openi import build_cohort, image_key
from medmix.encoders.image import load_image
from medmix.io import MedmixError
from medmix.synth_layouts import synth_openi

from conftest import SHARED_DATA

OPENI = SHARED_DATA / "openi-iu"


@pytest.fixture(scope="module")
def xml_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("openi_xml")
    synth_openi(root, n=24, seed=1, layout="xml")
    return root


def _prepare(root, **kw):
    co, rep = build_cohort(root, **kw)
    return C.finalize(co, rep)


def test_image_names_of_every_layout_share_one_key():
    assert image_key("CXR1_1_IM-0001-3001.png") == image_key("1_IM-0001-3001.dcm.png") == ("1", "IM-0001-3001")
    assert image_key("CXR7_IM-2263-1001") == ("7", "IM-2263-1001")
    assert image_key("notes.txt") is None


def test_xml_layout_counts_views_and_labels(xml_root, tmp_path):
    co, rep = _prepare(xml_root)
    C.write(co, rep, tmp_path / "cohort.parquet")
    assert rep["layout"] == "xml" and co.height == 24 == rep["counts"]["studies_read"]
    no_files = {str(i) for i in range(1, 25) if i % 6 == 0}
    frontal_only = {str(i) for i in range(1, 25) if i % 4 == 0}
    assert set(co.filter(pl.col("frontal").is_null())["sample_id"]) == no_files
    assert set(co.filter(pl.col("lateral").is_null())["sample_id"]) == no_files | frontal_only
    assert rep["missing"]["lateral"] == {"no_image_file_of_this_view": len(no_files | frontal_only)}
    # XML has no projection table: the first parentImage is the frontal view (counted)
    assert rep["counts"]["projection_from_xml_order"] == rep["counts"]["images_listed"]
    for p in co["frontal"].drop_nulls().explode().to_list() + co["lateral"].drop_nulls().explode().to_list():
        assert load_image(p).size == (32, 32)                       # 8- and 16-bit PNGs both decode
    # labels: normal, No Indexing = unknown, multilabel over the train split's most frequent heads
    row = {r["sample_id"]: r for r in co.iter_rows(named=True)}
    assert row["8"]["y_normal"] == 1 and row["5"]["y_normal"] is None and row["1"]["y_normal"] == 0
    tasks = rep["tasks"]
    assert tasks["normal"] == {"type": "binary", "columns": ["y_normal"]}
    assert tasks["problems"]["type"] == "multilabel" and len(tasks["problems"]["columns"]) == 6
    assert all(row["5"][c] is None for c in tasks["problems"]["columns"])
    text = (xml_root / "ecgen-radiology" / "3.xml").read_text()
    for col, term in rep["label_terms"].items():
        assert row["3"][col] == int(f"<major>{term}/" in text)
    assert row["7"]["indication"] is None and row["3"]["indication"] == "Cough for 3 days."


def test_csv_layout_gives_the_same_cohort(tmp_path, xml_root):
    synth_openi(tmp_path, n=24, seed=1, layout="csv")
    a, _ = _prepare(xml_root)
    b, rep = _prepare(tmp_path)
    assert rep["layout"] == "csv" and "projection_from_xml_order" not in rep["counts"]
    drop = ["frontal", "lateral"]
    assert a.drop(drop).equals(b.drop(drop))
    for v in drop:  # same views found, under the Kaggle file names
        assert [len(x or []) for x in a[v].to_list()] == [len(x or []) for x in b[v].to_list()]


def test_images_of_another_study_never_join(tmp_path):
    synth_openi(tmp_path, n=12, seed=0)
    # a stray PNG of study 6 (which has no files) named like a real one, and one of an unknown study
    (tmp_path / "NLMCXR_png" / "CXR6_IM-0006-9001.png").write_bytes((tmp_path / "NLMCXR_png" / "CXR1_IM-0001-1001.png").read_bytes())
    (tmp_path / "NLMCXR_png" / "CXR99_IM-0099-1001.png").write_bytes(b"")
    co, _ = _prepare(tmp_path)
    six = co.filter(pl.col("sample_id") == "6").row(0, named=True)
    assert six["frontal"] is None and six["lateral"] is None
    assert not any("CXR99" in p for p in co["frontal"].drop_nulls().explode().to_list())
    xml = tmp_path / "ecgen-radiology" / "2.xml"
    xml.write_text(xml.read_text().replace('parentImage id="CXR2_', 'parentImage id="CXR3_'))
    with pytest.raises(MedmixError, match=r"study 2 \(2.xml\): field 'parentImage' 'CXR3_IM-0002-1001'"):
        build_cohort(tmp_path)


def test_errors_name_file_row_and_field(tmp_path):
    synth_openi(tmp_path / "x", n=6, seed=0)
    bad = tmp_path / "x" / "ecgen-radiology" / "4.xml"
    bad.write_text(bad.read_text()[:-30])
    with pytest.raises(MedmixError, match=r"4.xml: malformed XML"):
        build_cohort(tmp_path / "x")

    root = tmp_path / "c"
    synth_openi(root, n=6, seed=0, layout="csv")
    rep = root / "indiana_reports.csv"
    rows = rep.read_text().splitlines()
    rep.write_text("\n".join(rows + [rows[3]]) + "\n")        # uid 3 again at data row 7
    with pytest.raises(MedmixError, match=r"indiana_reports.csv: row 7 \(line 8\): field 'uid' duplicates '3' \(first at row 3 \(line 4\)\)"):
        build_cohort(root)
    rep.write_text("\n".join(rows[:2] + ["x" + rows[2]] + rows[3:]) + "\n")
    with pytest.raises(MedmixError, match=r"row 2 \(line 3\): field 'uid' is 'x2'"):
        build_cohort(root)
    rep.write_text("\n".join(rows) + "\n")
    proj = root / "indiana_projections.csv"
    proj.write_text(proj.read_text().replace("Lateral", "Oblique", 1))
    with pytest.raises(MedmixError, match=r"indiana_projections.csv: row 2 \(line 3\): field 'projection' is 'Oblique'"):
        build_cohort(root)
    proj.unlink()
    with pytest.raises(MedmixError, match=r"indiana_projections.csv: .*not found.*optional_tables"):
        build_cohort(root)
    co, rep_ = build_cohort(root, optional_tables=["projections", "images"])
    assert co["frontal"].is_null().all() and rep_["warnings"]
    synth_openi(tmp_path / "y", n=6, seed=0)
    for p in (tmp_path / "y" / "NLMCXR_png").iterdir():
        p.unlink()
    (tmp_path / "y" / "NLMCXR_png").rmdir()
    with pytest.raises(MedmixError, match=r"NLMCXR_png: OpenI image folder not found"):
        build_cohort(tmp_path / "y", optional_tables=[])
    co, rep_ = build_cohort(tmp_path / "y")                    # images are optional by default
    assert rep_["missing"]["frontal"] == {"image_folder_absent": 6}
    with pytest.raises(MedmixError, match=r"no OpenI reports found"):
        build_cohort(tmp_path)


def test_split_file_excludes_and_counts(tmp_path):
    synth_openi(tmp_path, n=12, seed=0)
    sf = tmp_path / "annotation.json"
    sf.write_text(json.dumps({"train": [{"id": str(i)} for i in range(1, 8)], "val": [{"id": "8"}, {"id": "9"}],
                              "test": [{"id": "10"}, {"id": "11"}, {"id": "40"}]}))
    co, rep = _prepare(tmp_path, split_file=sf)
    assert rep["exclusions"]["not_in_split_file"] == 1 and rep["counts"]["split_file_ids_without_report"] == 1
    assert rep["counts"]["by_split"] == {"train": 7, "val": 2, "test": 2}
    assert co.group_by("patient_id").agg(pl.col("split").n_unique())["split"].max() == 1
    sf.write_text(json.dumps({"train": [{"id": "1"}], "val": [{"id": "1"}], "test": []}))
    with pytest.raises(MedmixError, match=r"annotation.json: val\[0\]: field 'id' 1 is already in split 'train'"):
        build_cohort(tmp_path, split_file=sf)


@pytest.mark.skipif(not (OPENI / "indiana_reports.csv").exists(), reason="real OpenI CSVs not available")
def test_real_openi_counts_and_labels_match_the_raw_files(tmp_path):
    co, rep = _prepare(OPENI, split_file=OPENI / "annotation_splits.json")
    C.write(co, rep, tmp_path / "cohort.parquet")
    # independent computation from the raw files with the csv and json modules
    with open(OPENI / "indiana_reports.csv", newline="") as f:
        raw = {r["uid"]: r for r in csv.DictReader(f)}
    split = {x["id"]: s for s, xs in json.loads((OPENI / "annotation_splits.json").read_text()).items() for x in xs}
    kept = {u: r for u, r in raw.items() if u in split}
    assert rep["counts"]["studies_read"] == len(raw) == 3851
    assert rep["exclusions"]["not_in_split_file"] == len(raw) - len(kept) == 25
    assert rep["counts"]["by_split"] == dict(Counter(split[u] for u in kept)) == {"train": 3062, "val": 382, "test": 382}
    heads = {u: [t.strip() for t in r["Problems"].split(";")] for u, r in kept.items()}
    freq = Counter(h for u, hs in heads.items() if split[u] == "train" and "No Indexing" not in hs
                   for h in set(hs) if h not in ("normal", "No Indexing"))
    top = [t for t, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:14]]
    assert list(rep["label_terms"].values()) == top and top[:3] == ["Lung", "Opacity", "Cardiomegaly"]
    for col, term in rep["label_terms"].items():
        for s in ("train", "val", "test"):
            want = sum(term in hs for u, hs in heads.items() if split[u] == s and "No Indexing" not in hs)
            assert rep["counts"]["positives"][col][s] == want, (term, s)
    normal = {s: sum(hs == ["normal"] for u, hs in heads.items() if split[u] == s) for s in ("train", "val", "test")}
    assert rep["counts"]["positives"]["y_normal"] == normal
    assert int(co["y_normal"].is_null().sum()) == sum("No Indexing" in hs for hs in heads.values())
    # no image files ship with the CSVs: both image modalities are missing (warning, counted)
    assert rep["counts"]["modality_available"]["frontal"] == 0 and rep["counts"]["images_listed"] == 7466
    assert rep["counts"]["modality_available"]["findings"] == sum(bool(r["findings"]) for r in kept.values())
    assert rep["counts"]["modality_available"]["impression"] == sum(bool(r["impression"]) for r in kept.values())
    one = co.filter(pl.col("sample_id") == "2").row(0, named=True)
    assert one["y_problems__cardiomegaly"] == 1 and one["findings"].startswith("Borderline cardiomegaly")
