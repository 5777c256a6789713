"""Small synthetic raw datasets in the real layouts of OpenI, MIMIC-III and a ccRCC folder.

They exist so that CI covers each loader on the files it reads in the wild (names, headers,
formats), with planted traps: images of another study, events after the prediction time, rows
that a correct loader must ignore. The MIMIC-IV generator with the planted signal is medmix/synth.py.
"""

from __future__ import annotations

import gzip
import io
from datetime import datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import polars as pl
from PIL import Image

# ------------------------------------------------------------------ OpenI
_TERMS = ["Cardiomegaly/mild", "Opacity/lung/base/left", "Pleural Effusion/right", "Calcified Granuloma/lung",
          "Pulmonary Atelectasis/base", "Spine/degenerative"]
_FINDING = {"Cardiomegaly": "The heart is enlarged.", "Opacity": "Patchy basilar opacity.",
            "Pleural Effusion": "Small right effusion.", "Calcified Granuloma": "Calcified granuloma.",
            "Pulmonary Atelectasis": "Bibasilar atelectasis.", "Spine": "Degenerative changes of the spine."}


def _png(path: Path, rng: np.random.Generator, bits: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = rng.random((size, size))
    if bits == 16:
        Image.fromarray((a * 65535).astype(np.uint16)).save(path)   # mode I;16
    else:
        Image.fromarray((a * 255).astype(np.uint8), mode="L").save(path)


def synth_openi(out: str | Path, n: int = 24, seed: int = 0, layout: str = "xml") -> dict:
    """Write `n` OpenI studies in the NLM XML layout (`ecgen-radiology/*.xml` + `NLMCXR_png/`)
    or the CSV flattening (`indiana_reports.csv`, `indiana_projections.csv`, `images/`).

    Every 6th study has no image files; every 4th has a frontal view only; PNGs alternate 8/16
    bit; every 8th study is "normal", one is "No Indexing". Returns the counts it wrote."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    reports, projections = [], []
    img_dir = out / ("NLMCXR_png" if layout == "xml" else "images")
    files = 0
    for i in range(1, n + 1):
        if i == 5:
            mesh = ["No Indexing"]
        elif i % 8 == 0:
            mesh = ["normal"]
        else:
            k = 1 + int(rng.integers(0, 3))
            mesh = [_TERMS[j] for j in sorted(rng.choice(len(_TERMS), size=k, replace=False))]
        heads = [m.split("/")[0] for m in mesh]
        findings = " ".join(_FINDING.get(h, "The lungs are clear.") for h in heads)
        impression = "No acute cardiopulmonary abnormality." if heads == ["normal"] else f"{heads[0]}."
        indication = None if i % 7 == 0 else f"Cough for {i} days."
        series = f"IM-{i:04d}"
        views = [("Frontal", f"{series}-1001")] + ([] if i % 4 == 0 else [("Lateral", f"{series}-2001")])
        has_files = i % 6 != 0
        for j, (proj, tail) in enumerate(views):
            name = f"CXR{i}_{tail}.png" if layout == "xml" else f"{i}_{tail}.dcm.png"
            projections.append({"uid": i, "filename": f"{i}_{tail}.dcm.png", "projection": proj})
            if has_files:
                _png(img_dir / name, rng, 16 if (i + j) % 2 else 8)
                files += 1
        reports.append({"uid": i, "mesh": mesh, "heads": heads, "indication": indication, "findings": findings,
                        "impression": impression, "images": [f"CXR{i}_{t}" for _, t in views]})
    if layout == "xml":
        d = out / "ecgen-radiology"
        d.mkdir(parents=True, exist_ok=True)
        for r in reports:
            sec = "".join(f'<AbstractText Label="{lab.upper()}">{escape(r[lab])}</AbstractText>'
                          for lab in ("indication", "findings", "impression") if r[lab] is not None)
            sec = '<AbstractText Label="COMPARISON">None.</AbstractText>' + sec
            majors = "".join(f"<major>{escape(m)}</major>" for m in r["mesh"])
            imgs = "".join(f'<parentImage id="{x}"><caption>Xray Chest PA and Lateral</caption></parentImage>'
                           for x in r["images"])
            (d / f"{r['uid']}.xml").write_text(
                f'<?xml version="1.0" encoding="utf-8"?>\n<eCitation><meta type="rr"/><uId id="CXR{r["uid"]}"/>'
                f'<pmcId id="{r["uid"]}"/><docSource>CXR</docSource><IUXRId id="{r["uid"]}"/>'
                f'<MedlineCitation Owner="Indiana University" Status="supplied by publisher"><Article PubModel="Electronic">'
                f'<ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle><Abstract>{sec}</Abstract>'
                f'</Article></MedlineCitation><MeSH>{majors}</MeSH>{imgs}</eCitation>\n')
    else:
        out.mkdir(parents=True, exist_ok=True)
        pl.DataFrame({
            "uid": [r["uid"] for r in reports], "MeSH": [";".join(r["mesh"]) for r in reports],
            "Problems": [";".join(r["heads"]) for r in reports], "image": ["Xray Chest PA and Lateral"] * len(reports),
            "indication": [r["indication"] for r in reports], "comparison": ["None."] * len(reports),
            "findings": [r["findings"] for r in reports], "impression": [r["impression"] for r in reports],
        }).write_csv(out / "indiana_reports.csv")
        pl.DataFrame(projections).write_csv(out / "indiana_projections.csv")
    return {"studies": n, "image_files": files, "image_rows": len(projections)}


_M3 = {
    "PATIENTS": ["ROW_ID", "SUBJECT_ID", "GENDER", "DOB", "DOD", "DOD_HOSP", "DOD_SSN", "EXPIRE_FLAG"],
    "ADMISSIONS": ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ADMITTIME", "DISCHTIME", "DEATHTIME", "ADMISSION_TYPE",
                   "ADMISSION_LOCATION", "DISCHARGE_LOCATION", "INSURANCE", "LANGUAGE", "RELIGION", "MARITAL_STATUS",
                   "ETHNICITY", "EDREGTIME", "EDOUTTIME", "DIAGNOSIS", "HOSPITAL_EXPIRE_FLAG", "HAS_CHARTEVENTS_DATA"],
    "ICUSTAYS": ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "DBSOURCE", "FIRST_CAREUNIT", "LAST_CAREUNIT",
                 "FIRST_WARDID", "LAST_WARDID", "INTIME", "OUTTIME", "LOS"],
    "CHARTEVENTS": ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ICUSTAY_ID", "ITEMID", "CHARTTIME", "STORETIME", "CGID",
                    "VALUE", "VALUENUM", "VALUEUOM", "WARNING", "ERROR", "RESULTSTATUS", "STOPPED"],
    "LABEVENTS": ["ROW_ID", "SUBJECT_ID", "HADM_ID", "ITEMID", "CHARTTIME", "VALUE", "VALUENUM", "VALUEUOM", "FLAG"],
    "NOTEEVENTS": ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME", "CATEGORY",
                   "DESCRIPTION", "CGID", "ISERROR", "TEXT"],
}
# (CareVue itemid, MetaVision itemid, scale applied to the MIMIC-IV-unit value to write it raw)
_M3_VITALS = {"heart rate": (211, 220045), "systolic bp": (455, 220179), "respiratory rate": (618, 220210),
              "spo2": (646, 220277), "temperature_c": (676, 223762)}
_M3_LABS = {"lactate": 50813, "creatinine": 50912, "wbc": 51301, "sodium": 50983}


def _write_gz(path: Path, cols: list[str], rows: list[dict]) -> None:
    df = pl.DataFrame([{c: r.get(c) for c in cols} for r in rows], schema={c: pl.String for c in cols}, orient="row")
    buf = io.BytesIO()
    df.write_csv(buf)
    with gzip.open(path, "wb") as f:
        f.write(buf.getvalue())


def synth_mimic3(out: str | Path, n: int = 60, seed: int = 0) -> dict:
    """MIMIC-III v1.4-shaped tables (upper-case headers, .csv.gz) for `n` patients.

    Half the stays are CareVue (itemids 211, 455, 618, 646, 676 in °C), half MetaVision (2200xx,
    223762 °C). A latent severity drives mortality, heart rate, lactate and the notes' wording,
    so models trained on the synthetic MIMIC-IV data transfer. Planted: radiology notes and labs
    after the prediction time (`patient expired`, lactate 39), a discharge summary and an
    ISERROR radiology note before it; a correct loader reads none of them. Some stays are short,
    some are a second stay of their admission, a few patients die before the prediction time."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    T = {k: [] for k in _M3}
    fmt = "%Y-%m-%d %H:%M:%S"
    rid = iter(range(1, 10**9))
    hadm, stay = 100000, 200000
    for i in range(n):
        sid = 1000 + i
        sev = rng.normal()
        dies = rng.random() < 1 / (1 + np.exp(-(-1.2 + 1.6 * sev)))
        dob = datetime(2100 + int(rng.integers(0, 50)), 1, 1) if i % 17 else datetime(1850, 1, 1)  # >89: shifted
        admit = datetime(2160 + int(rng.integers(0, 20)), int(rng.integers(1, 12)), 3, 8, 0)
        intime = admit + timedelta(hours=int(rng.integers(1, 12)))
        hours = float(rng.uniform(20, 300))
        outtime = intime + timedelta(hours=hours)
        early_death = i % 19 == 3
        death = intime + timedelta(hours=30) if early_death else (outtime if dies else None)
        hadm += 1
        stay += 1
        cv = i % 2 == 0
        T["PATIENTS"].append({"ROW_ID": str(next(rid)), "SUBJECT_ID": str(sid), "GENDER": "F" if i % 3 else "M",
                              "DOB": dob.strftime(fmt), "EXPIRE_FLAG": str(int(bool(death)))})
        T["ADMISSIONS"].append({"ROW_ID": str(next(rid)), "SUBJECT_ID": str(sid), "HADM_ID": str(hadm),
                                "ADMITTIME": admit.strftime(fmt), "DISCHTIME": (outtime + timedelta(days=2)).strftime(fmt),
                                "DEATHTIME": death.strftime(fmt) if death else None, "ADMISSION_TYPE": "EMERGENCY",
                                "HOSPITAL_EXPIRE_FLAG": str(int(bool(death))), "HAS_CHARTEVENTS_DATA": "1"})
        T["ICUSTAYS"].append({"ROW_ID": str(next(rid)), "SUBJECT_ID": str(sid), "HADM_ID": str(hadm),
                              "ICUSTAY_ID": str(stay), "DBSOURCE": "carevue" if cv else "metavision",
                              "FIRST_CAREUNIT": "MICU", "LAST_CAREUNIT": "MICU", "INTIME": intime.strftime(fmt),
                              "OUTTIME": outtime.strftime(fmt), "LOS": f"{hours / 24:.4f}"})
        if i % 7 == 5:  # a second, later stay of the same admission: not the cohort's unit
            stay += 1
            T["ICUSTAYS"].append({"ROW_ID": str(next(rid)), "SUBJECT_ID": str(sid), "HADM_ID": str(hadm),
                                  "ICUSTAY_ID": str(stay), "DBSOURCE": "metavision", "INTIME": (outtime + timedelta(hours=5)).strftime(fmt),
                                  "OUTTIME": (outtime + timedelta(hours=80)).strftime(fmt), "LOS": "3.1"})
        pred = intime + timedelta(hours=48)
        for h in range(0, int(min(hours, 60)), 4):
            t = intime + timedelta(hours=h, minutes=10)
            vals = {"heart rate": 85 + 12 * sev + rng.normal(0, 5), "systolic bp": 120 - 8 * sev + rng.normal(0, 8),
                    "respiratory rate": 18 + 3 * sev + rng.normal(0, 2), "spo2": min(100, 97 - sev + rng.normal(0, 1)),
                    "temperature_c": 37 + 0.4 * sev + rng.normal(0, 0.3)}
            for name, v in vals.items():
                iid = _M3_VITALS[name][0 if cv else 1]
                if t >= pred:
                    v = 300.0 if name == "heart rate" else v  # after the prediction time: must be ignored
                T["CHARTEVENTS"].append({"ROW_ID": str(next(rid)), "SUBJECT_ID": str(sid), "HADM_ID": str(hadm),
                                         "ICUSTAY_ID": str(stay if i % 7 != 5 else stay - 1), "ITEMID": str(iid),
                                         "CHARTTIME": t.strftime(fmt), "VALUE": f"{v:.1f}", "VALUENUM": f"{v:.1f}"})
        for h, lac in ((-6, 1.5 + 1.2 * max(sev, -1)), (20, 1.4 + 1.2 * max(sev, -1)), (50, 39.0)):
            t = intime + timedelta(hours=h)
            for name, iid in _M3_LABS.items():
                v = {"lactate": lac, "creatinine": 1.0 + 0.3 * sev, "wbc": 9 + 2 * sev, "sodium": 139.0}[name]
                T["LABEVENTS"].append({"ROW_ID": str(next(rid)), "SUBJECT_ID": str(sid), "HADM_ID": str(hadm),
                                       "ITEMID": str(iid), "CHARTTIME": t.strftime(fmt), "VALUE": f"{v:.2f}",
                                       "VALUENUM": f"{v:.2f}"})
        def note(t, cat, text, err=None, time=True):
            T["NOTEEVENTS"].append({"ROW_ID": str(next(rid)), "SUBJECT_ID": str(sid), "HADM_ID": str(hadm),
                                    "CHARTDATE": t.strftime("%Y-%m-%d"), "CHARTTIME": t.strftime(fmt) if time else None,
                                    "CATEGORY": cat, "DESCRIPTION": "CHEST (PORTABLE AP)", "ISERROR": err, "TEXT": text})
        if i % 5:
            word = "Large bilateral effusions and consolidation." if sev > 0.5 else "Lungs are clear."
            note(intime + timedelta(hours=6), "Radiology", f"FINDINGS: {word} IMPRESSION: see above.")
        note(intime + timedelta(hours=3), "Discharge summary", "DISCHARGE SECRET: patient expired.")
        note(intime + timedelta(hours=4), "Radiology", "ERRONEOUS NOTE: patient expired.", err="1")
        note(pred + timedelta(hours=2), "Radiology", "FUTURE NOTE: patient expired." if dies else "FUTURE NOTE: cleared.")
        note(pred, "Radiology", "DATE-ONLY FUTURE NOTE.", time=False)   # date of the prediction time: end of day
    for name, cols in _M3.items():
        _write_gz(out / f"{name}.csv.gz", cols, T[name])
    return {"patients": n, "icu_stays": len(T["ICUSTAYS"]), "notes": len(T["NOTEEVENTS"])}


def synth_ccrcc(out: str | Path, n: int = 40, seed: int = 0) -> dict:
    """A ccRCC folder (clinical, genomics, CT NIfTI, MRI DICOM series, WSI features): medmix.data.ccrcc.synth."""
    from medmix.data.ccrcc import synth
    return synth(out, n=n, seed=seed)
