"""OpenI / Indiana University chest X-ray collection → one cohort row per study.

Two layouts are accepted (detected from `root`):
- NLM original: `ecgen-radiology/*.xml` (one report per file: `uId`, `AbstractText` sections,
  `MeSH/major` terms, `parentImage` ids) and the PNGs in `NLMCXR_png/`;
- the CSV flattening (Kaggle "chest-xrays-indiana-university"): `indiana_reports.csv`
  (`uid,MeSH,Problems,image,indication,comparison,findings,impression`),
  `indiana_projections.csv` (`uid,filename,projection`) and an image folder.

Modalities: `frontal`, `lateral` (image path lists; null when no file of that view is present),
`indication`, `findings`, `impression` (texts). A study is one time point: every input belongs
to the study itself (images of other studies never join it), so there is no later event to cut;
but findings/impression are the text the MeSH labels were coded from, so using them as inputs
for these labels is optimistic (docs/datasets.md).

Labels: `y_normal` (MeSH major is exactly "normal") and a multilabel task `problems` over the
`top_k` most frequent MeSH-major heads (= the CSV's `Problems`) in the train split, one column
`y_problems__<term>` each. Studies indexed "No Indexing" have unknown (null) labels.
Patients are not identified in OpenI: `patient_id` is the study uid.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import polars as pl

from medmix.data import cohort as cohort_mod
from medmix.data.common import check_unique, count, log, new_report, read_table, slug, source
from medmix.io import MedmixError

TEXTS = ("indication", "findings", "impression")
VIEWS = ("frontal", "lateral")
NOT_A_TERM = {"normal", "no indexing"}
_IMG = re.compile(r"^(?:CXR)?(\d+)_(?:\d+_)?(IM-[0-9-]+?)(?:\.dcm)?(?:\.png|\.jpg|\.jpeg)?$", re.IGNORECASE)


def image_key(name: str) -> tuple[str, str] | None:
    """(uid, IM-tail) of any OpenI image name: `CXR1_1_IM-0001-3001.png` (NLMCXR_png),
    `CXR7_IM-2263-1001` (XML parentImage id), `7_IM-2263-1001.dcm.png` (Kaggle)."""
    m = _IMG.match(Path(name).name)
    return (str(int(m.group(1))), m.group(2).upper()) if m else None


def _text(v: str | None) -> str | None:
    if v is None:
        return None
    v = " ".join(v.split())
    return v or None


def _read_csv_layout(root: Path, report: dict | None = None) -> tuple[list[dict], Path]:
    path = root / "indiana_reports.csv"
    # header names matched whatever their case (a missing one is an error naming the file and column)
    df = read_table(path, ["uid", "MeSH", "Problems", "indication", "findings", "impression"], report=report)
    studies = []
    for i, r in enumerate(df.iter_rows(named=True)):
        uid = (r["uid"] or "").strip()
        if not uid.isdigit():
            raise MedmixError(f"{path}: row {i + 1} (line {i + 2}): field 'uid' is {r['uid']!r}, expected an integer")
        if r["MeSH"] is None:
            raise MedmixError(f"{path}: row {i + 1} (line {i + 2}) (uid {uid}): field 'MeSH' is empty")
        studies.append({"uid": str(int(uid)), "row": i + 1, "mesh": [t.strip() for t in r["MeSH"].split(";") if t.strip()],
                        **{t: _text(r[t]) for t in TEXTS}, "images": None})
    return studies, path


def _read_xml_layout(folder: Path) -> list[dict]:
    files = sorted(folder.glob("*.xml"), key=lambda p: (len(p.stem), p.stem))
    if not files:
        raise MedmixError(f"{folder}: no report XML files (expected ecgen-radiology/<n>.xml)")
    studies = []
    for f in files:
        try:
            root = ET.parse(f).getroot()
        except ET.ParseError as e:
            raise MedmixError(f"{f}: malformed XML: {e}") from None
        node = root.find("uId")
        raw = node.get("id") if node is not None else None
        if raw is None:
            node = root.find("IUXRId")
            raw = node.get("id") if node is not None else f.stem
        uid = re.sub(r"^CXR", "", raw or "")
        if not uid.isdigit():
            raise MedmixError(f"{f}: field 'uId' is {raw!r}, expected CXR<number>")
        sections = {(a.get("Label") or "").lower(): "".join(a.itertext()) for a in root.iter("AbstractText")}
        mesh = [(m.text or "").strip() for m in root.findall("MeSH/major") if (m.text or "").strip()]
        if not mesh:
            raise MedmixError(f"{f}: field 'MeSH/major' is empty (every OpenI report has at least one major term)")
        images = [p.get("id") for p in root.iter("parentImage") if p.get("id")]
        studies.append({"uid": str(int(uid)), "row": f.name, "mesh": mesh,
                        **{t: _text(sections.get(t)) for t in TEXTS}, "images": images})
    return studies


def _read_projections(path: Path, report: dict | None = None) -> dict[tuple[str, str], str]:
    df = read_table(path, ["uid", "filename", "projection"], report=report)
    out = {}
    for i, r in enumerate(df.iter_rows(named=True)):
        proj = (r["projection"] or "").strip().lower()
        if proj not in VIEWS:
            raise MedmixError(f"{path}: row {i + 1} (line {i + 2}): field 'projection' is {r['projection']!r}, "
                              "expected Frontal or Lateral")
        key = image_key(r["filename"] or "")
        if key is None:
            raise MedmixError(f"{path}: row {i + 1} (line {i + 2}): field 'filename' is {r['filename']!r}, "
                              "not an OpenI image name (<uid>_IM-....dcm.png)")
        if key in out:
            raise MedmixError(f"{path}: row {i + 1} (line {i + 2}): field 'filename' duplicates {r['filename']!r}")
        out[key] = proj
    return out


def _index_images(folder: Path) -> dict[tuple[str, str], str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in (".png", ".jpg", ".jpeg") and (k := image_key(p.name)):
            out.setdefault(k, str(p.resolve()))
    return out


def _read_split_file(path: Path) -> dict[str, str]:
    """R2Gen-style annotation.json ({train|val|test: [{id, ...}]}) or a CSV with uid/id and split."""
    if path.suffix == ".json":
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise MedmixError(f"{path}: not valid JSON: {e}") from None
        rows = [(s, str(x.get("id", "")), f"{s}[{i}]") for s in d for i, x in enumerate(d[s])]
    else:
        df = read_table(path)
        key = "uid" if "uid" in df.columns else "id"
        if key not in df.columns or "split" not in df.columns:
            raise MedmixError(f"{path}: expected columns uid (or id) and split")
        rows = [(r["split"], str(r[key]), f"row {i + 1}") for i, r in enumerate(df.iter_rows(named=True))]
    out: dict[str, str] = {}
    for s, uid, where in rows:
        if s not in cohort_mod.SPLITS:
            raise MedmixError(f"{path}: {where}: field 'split' is {s!r}, expected one of train, val, test")
        uid = re.sub(r"^CXR", "", uid)
        if not uid.isdigit():
            raise MedmixError(f"{path}: {where}: field 'id' is {uid!r}, expected a study uid")
        uid = str(int(uid))
        if uid in out:
            raise MedmixError(f"{path}: {where}: field 'id' {uid} is already in split '{out[uid]}'")
        out[uid] = s
    return out


def build_cohort(root: str | Path, images: str | Path | None = None, split_file: str | Path | None = None,
                 top_k: int = 14, split: dict | None = None, optional_tables=("images",)) -> tuple[pl.DataFrame, dict]:
    """Return (cohort with splits, report) for an OpenI root in either layout."""
    root = Path(root)
    optional = set(optional_tables or ())
    split = split or {"train": 0.7, "val": 0.15, "seed": 0}
    report = new_report()
    if (root / "indiana_reports.csv").exists():
        layout = "csv"
        studies, _ = _read_csv_layout(root, report)
        where = str(root / "indiana_reports.csv")
    elif (root / "ecgen-radiology").is_dir():
        layout = "xml"
        studies = _read_xml_layout(root / "ecgen-radiology")
        where = str(root / "ecgen-radiology")
    else:
        raise MedmixError(f"{root}: no OpenI reports found (expected indiana_reports.csv or ecgen-radiology/*.xml)")
    report["layout"] = layout
    check_unique([s["uid"] for s in studies], where, "uid", rows=[s["row"] for s in studies])
    count(report, "counts", "studies_read", len(studies))

    # ---- images: folder index, projection of each image ----
    folder = Path(images) if images else next((root / d for d in ("NLMCXR_png", "images", "images_normalized")
                                               if (root / d).is_dir()), root / "NLMCXR_png")
    folder = source(folder, "images", "OpenI image folder", optional, report,
                    hint="set datasets/<name>/images to the PNG folder")
    index = _index_images(folder) if folder else {}
    count(report, "counts", "image_files_found", len(index))
    proj_path = root / "indiana_projections.csv"
    projections = {}
    if layout == "csv" or proj_path.exists():
        p = source(proj_path, "projections", "indiana_projections.csv", optional, report)
        projections = _read_projections(p, report) if p else {}
    if layout == "csv":  # the CSV layout lists the images per study only in the projections table
        by_uid: dict[str, list] = {}
        for (uid, tail) in projections:
            by_uid.setdefault(uid, []).append(f"{uid}_{tail}")
        known = {s["uid"] for s in studies}
        count(report, "counts", "projection_rows_without_report",
              sum(len(v) for u, v in by_uid.items() if u not in known))
        for s in studies:
            s["images"] = sorted(by_uid.get(s["uid"], []))
    from_order = 0
    absent = 0
    for s in studies:
        views: dict[str, list] = {v: [] for v in VIEWS}
        for j, name in enumerate(s["images"] or []):
            key = image_key(name)
            if key is None or key[0] != s["uid"]:
                raise MedmixError(f"{where}: study {s['uid']} ({s['row']}): field 'parentImage' {name!r} is not "
                                  "an image of this study")
            view = projections.get(key)
            if view is None:  # XML without a projection table: OpenI lists the frontal view first
                view = "frontal" if j == 0 else "lateral"
                from_order += 1
            if key in index:
                views[view].append(index[key])
            else:
                absent += 1
        for v in VIEWS:
            s[v] = sorted(views[v]) or None
    count(report, "counts", "images_listed", sum(len(s["images"] or []) for s in studies))
    count(report, "counts", "image_files_absent", absent)
    if from_order:
        count(report, "counts", "projection_from_xml_order", from_order)

    # ---- splits: a given split file or seeded by study ----
    df = pl.DataFrame({"sample_id": [s["uid"] for s in studies], "patient_id": [s["uid"] for s in studies]})
    if split_file:
        sp = _read_split_file(Path(split_file))
        report["split_source"] = str(split_file)
        count(report, "exclusions", "not_in_split_file", sum(s["uid"] not in sp for s in studies))
        count(report, "counts", "split_file_ids_without_report", len(set(sp) - {s["uid"] for s in studies}))
        keep = [s["uid"] in sp for s in studies]
        studies = [s for s, k in zip(studies, keep) if k]
        df = df.filter(pl.Series(keep)).with_columns(
            pl.col("sample_id").replace_strict(sp, return_dtype=pl.String).alias("split"))
    else:
        report["split_source"] = f"seeded by study: {split}"
        df = cohort_mod.assign_splits(df, split["train"], split["val"], split["seed"])

    # ---- labels: normal + top-K MeSH-major heads of the train split ----
    heads = [[t.split("/")[0].strip() for t in s["mesh"]] for s in studies]
    unknown = [any(h.lower() == "no indexing" for h in hs) for hs in heads]
    count(report, "counts", "studies_no_indexing", sum(unknown))
    train = df["split"].to_list()
    freq = Counter(h for hs, sp_, u in zip(heads, train, unknown) if sp_ == "train" and not u
                   for h in set(hs) if h.lower() not in NOT_A_TERM)
    terms = [t for t, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]]
    cols = [f"y_problems__{slug(t)}" for t in terms]
    if len(set(cols)) != len(cols):
        raise MedmixError(f"{where}: two of the top-{top_k} MeSH terms {terms} give the same column name")
    labels = {"y_normal": [None if u else int([h.lower() for h in hs] == ["normal"]) for hs, u in zip(heads, unknown)]}
    for t, c in zip(terms, cols):
        labels[c] = [None if u else int(t in hs) for hs, u in zip(heads, unknown)]
    report["label_terms"] = dict(zip(cols, terms))
    report["label_terms_train_frequency"] = {t: freq[t] for t in terms}
    report["tasks"] = {"normal": {"type": "binary", "columns": ["y_normal"]},
                       "problems": {"type": "multilabel", "columns": cols}}
    df = df.with_columns([pl.Series(c, v, dtype=pl.Int8) for c, v in labels.items()])
    df = df.with_columns([pl.Series(v, [s[v] for s in studies], dtype=pl.List(pl.String)) for v in VIEWS]
                         + [pl.Series(t, [s[t] for s in studies], dtype=pl.String) for t in TEXTS])
    for m in VIEWS:
        why = "image_folder_absent" if folder is None else "no_image_file_of_this_view"
        report["missing"][m] = {why: int(df[m].is_null().sum())}
    for m in TEXTS:
        report["missing"][m] = {"section_empty": int(df[m].is_null().sum())}
    log.info("missing inputs: %s", report["missing"])
    log.info("openi (%s layout): %d studies, top-%d terms %s", layout, df.height, top_k, terms)
    return df, report
