"""Synthetic raw data in the real MIMIC-IV / MIMIC-IV-Note / MIMIC-CXR-JPG layouts.

The demo runs the same loader code as real data. The planted signal: each patient has a latent
severity s ~ N(0, 1); in-hospital mortality has logit -2.6 + 2.4 s. Every modality, and every part
of it, is a separate noisy view of s:

    v_ehr   -> vitals and labs                   (both EHR experts)
    v_head  -> the findings at the note's start  (a right-truncating text expert sees it)
    v_tail  -> the impression at the note's end  (a left-truncating text expert sees it)
    v_diff  -> a diffuse basal opacity           (visible at low resolution, whole image)
    v_nod   -> small central nodules             (visible only at full resolution, central crop)

so every modality is informative but incomplete, and the two experts of a modality are
complementary. Reliability varies per sample, as in real data: ~20% of notes have an
uninformative findings or impression section ("limited study"), and ~25% of images are blurred
(the nodules vanish; the diffuse opacity stays), so which expert to trust is sample-specific.
Modalities are missing naturally (~30% of stays without a CXR before the prediction time, ~20%
without a radiology note). Leakage traps: notes and CXR studies charted *after* the prediction
time carry the outcome ("patient expired"); a correct loader never reads them.
"""

from __future__ import annotations

import functools
import gzip
import io
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from medmix.data.variables import LABS, VITALS

_HEAD = [  # r_head levels, low -> high risk
    ["Lungs are clear. No focal consolidation, effusion or pneumothorax.",
     "Clear lungs without effusion. Heart size is normal."],
    ["Mild vascular congestion without focal consolidation.",
     "Minimal bibasilar atelectasis. No pleural effusion."],
    ["Moderate bibasilar opacities, likely atelectasis or early pneumonia.",
     "Patchy left lower lobe opacity concerning for aspiration."],
    ["Large bilateral pleural effusions with dense consolidation and pulmonary edema.",
     "Extensive bilateral airspace consolidation with new large effusion."],
]
_TAIL = [
    ["IMPRESSION: No acute cardiopulmonary process.", "IMPRESSION: Normal chest radiograph."],
    ["IMPRESSION: Stable appearance compared to prior.", "IMPRESSION: Little change, mild atelectasis."],
    ["IMPRESSION: Interval worsening of opacities; infection not excluded.",
     "IMPRESSION: New opacity, possibly pneumonia, recommend follow-up."],
    ["IMPRESSION: Rapidly progressive multifocal airspace disease, concerning for ARDS.",
     "IMPRESSION: Severe worsening with diffuse alveolar damage pattern."],
]
_FILLER = [
    "The cardiomediastinal silhouette is within normal limits for technique.",
    "Support devices are unchanged in position.",
    "An endotracheal tube terminates several centimeters above the carina.",
    "A right internal jugular central venous catheter ends in the low superior vena cava.",
    "A nasogastric tube courses below the diaphragm and out of the field of view.",
    "The osseous structures are unremarkable for age.",
    "Surgical clips project over the upper abdomen.",
    "Comparison is made with the prior radiograph from the same admission.",
    "The hila are of normal size and configuration.",
    "Degenerative changes are seen in the thoracic spine.",
    "Portable upright technique limits assessment of the lung bases.",
    "There is no free air under the diaphragm.",
]
_LIMITED_HEAD = "Limited portable study; the lung bases are obscured by overlying soft tissue."
_LIMITED_TAIL = "IMPRESSION: Limited examination, please refer to the findings above."
_LEAK_DEAD = "IMPRESSION: Comfort measures only; patient expired."
_LEAK_ALIVE = "IMPRESSION: Improving; cleared for transfer to the floor."

_T0 = datetime(2110, 1, 1)


def _ts(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


def _level(x: np.ndarray, cuts=(-0.5, 0.3, 1.0)) -> np.ndarray:
    return np.digitize(x, cuts)


def _write_csv_gz(df: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    df.write_csv(buf)
    with gzip.open(path, "wb", compresslevel=3) as f:
        f.write(buf.getvalue())


@functools.lru_cache(maxsize=4)
def _chest_template(size: int) -> tuple[np.ndarray, ...]:
    """The grid, the empty chest (dark lungs on a bright mediastinum) and the basal-zone profile
    every image of a size shares (read-only)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.75 - 0.15 * yy
    for cx in (0.3, 0.7):  # lungs
        lung = ((xx - cx) / 0.17) ** 2 + ((yy - 0.5) / 0.33) ** 2 < 1
        img = np.where(lung, 0.25, img)
    basal = np.exp(-((yy - 0.75) / 0.12) ** 2) * (np.abs(xx - 0.5) > 0.08)
    for a in (yy, xx, img, basal):
        a.flags.writeable = False
    return yy, xx, img, basal


def _chest_image(rng: np.random.Generator, r_diff: float, r_nod: float, size: int = 128,
                blurred: bool = False) -> np.ndarray:
    """A crude frontal chest radiograph: dark lungs on a bright mediastinum, plus planted findings."""
    yy, xx, img, basal = _chest_template(size)
    # diffuse basal opacity: a broad, smooth brightening of both lower zones (low frequency)
    sev = 1 / (1 + np.exp(-2.0 * r_diff))
    img = img + 0.45 * sev * basal
    # nodules: small bright dots in the central region (high frequency, needs full resolution)
    n_nod = rng.poisson(4.0 * max(r_nod + 0.6, 0.0))
    for _ in range(n_nod):
        cy, cx = rng.uniform(0.35, 0.65, size=2)
        img = img + 0.6 * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (0.012 ** 2)))
    if blurred:  # a poor-quality image: fine detail (the nodules) is lost, the broad opacity stays
        k = 9
        pad = np.pad(img, k, mode="edge")
        img = sum(pad[k + dy:k + dy + size, k + dx:k + dx + size] for dy in range(-k, k + 1, 3)
                  for dx in range(-k, k + 1, 3)) / 49
    img = img + rng.normal(0, 0.04, size=img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _events(rng, n, r, subj, hadm, stay, intime, icu_hours):
    """chartevents, labevents and their dictionaries over the whole stay (the loader must cut at
    the prediction time); vitals and labs are noisy views of the severity `r[:, 0]`."""
    base = {  # name -> (mean, sd of patient level, effect of r_ehr, measurement noise)
        "heart rate": (86, 8, 11, 6), "systolic bp": (122, 10, -13, 8), "diastolic bp": (65, 7, -6, 6),
        "mean bp": (82, 7, -9, 6), "respiratory rate": (18, 2.5, 3.5, 2), "spo2": (96.5, 1.2, -1.6, 1),
        "temperature": (98.6, 0.6, 0.7, 0.3),
        "lactate": (1.6, 0.4, 0.9, 0.3), "creatinine": (1.1, 0.3, 0.55, 0.1), "wbc": (10, 3, 3.5, 1),
        "bun": (22, 7, 10, 2), "sodium": (139, 3, -1.5, 1), "potassium": (4.1, 0.4, 0.2, 0.2),
        "glucose": (130, 30, 15, 12), "hemoglobin": (10.8, 1.6, -0.8, 0.3), "platelets": (210, 60, -40, 12),
        "bicarbonate": (24, 2.5, -2.5, 1),
    }
    level = {k: m + 0.5 * s * rng.normal(size=n) + e * r[:, 0] for k, (m, s, e, _) in base.items()}
    ce = {k: [] for k in ("subject_id", "hadm_id", "stay_id", "time", "itemid", "vals", "valueuom")}
    le = []
    lab_id = 1
    for i in range(n):
        hours = np.arange(0, icu_hours[i], 2.0)
        stamps = np.array([_ts(intime[i] + timedelta(hours=float(h))) for h in hours], dtype=object)
        for itemid, (name, unit) in VITALS.items():
            keep = rng.random(len(hours)) < 0.85
            vals = level[name][i] + base[name][3] * rng.normal(size=len(hours))
            if name == "spo2":
                vals = np.minimum(vals, 100)
            k = int(keep.sum())
            for col, v in (("subject_id", subj[i]), ("hadm_id", hadm[i]), ("stay_id", stay[i]), ("itemid", itemid),
                           ("valueuom", unit)):
                ce[col].append(np.full(k, v, dtype=object if col == "valueuom" else np.int64))
            ce["time"].append(stamps[keep])
            ce["vals"].append(vals[keep])
        for h in np.arange(-6, icu_hours[i], 12.0):  # labs twice a day, one draw before the ICU
            t = intime[i] + timedelta(hours=float(h) + float(rng.uniform(0, 2)))
            t_chart, t_store = _ts(t), _ts(t + timedelta(hours=1))
            spec = int(rng.integers(1_000_000, 99_999_999))
            for itemid, (name, unit) in LABS.items():
                if rng.random() < 0.1:
                    continue
                v = max(level[name][i] + base[name][3] * rng.normal(), 0.1)
                le.append((lab_id, int(subj[i]), int(hadm[i]), spec, itemid, None, t_chart,
                           t_store, f"{v:.2f}", round(float(v), 2), unit,
                           None, None, None, "ROUTINE", None))
                lab_id += 1
    if not ce["vals"]:  # no stay: empty columns of the right type
        ce = {k: [np.zeros(0, dtype=object if k in ("time", "valueuom") else np.float64 if k == "vals" else np.int64)]
              for k in ce}
    vals = np.concatenate(ce["vals"]).tolist()
    value = [f"{v:.1f}" for v in vals]
    times = np.concatenate(ce["time"]).tolist()
    chartevents = pl.DataFrame({
        "subject_id": np.concatenate(ce["subject_id"]), "hadm_id": np.concatenate(ce["hadm_id"]),
        "stay_id": np.concatenate(ce["stay_id"]), "caregiver_id": pl.Series([None] * len(vals), dtype=pl.Int64),
        "charttime": times, "storetime": times, "itemid": np.concatenate(ce["itemid"]), "value": value,
        "valuenum": [float(v) for v in value],  # = round(v, 1): CPython rounds through the same decimal string
        "valueuom": np.concatenate(ce["valueuom"]).tolist(), "warning": np.zeros(len(vals), dtype=np.int64),
    }, schema={
        "subject_id": pl.Int64, "hadm_id": pl.Int64, "stay_id": pl.Int64, "caregiver_id": pl.Int64,
        "charttime": pl.String, "storetime": pl.String, "itemid": pl.Int64, "value": pl.String,
        "valuenum": pl.Float64, "valueuom": pl.String, "warning": pl.Int64})
    labevents = pl.DataFrame(le, orient="row", schema={
        "labevent_id": pl.Int64, "subject_id": pl.Int64, "hadm_id": pl.Int64, "specimen_id": pl.Int64,
        "itemid": pl.Int64, "order_provider_id": pl.String, "charttime": pl.String, "storetime": pl.String,
        "value": pl.String, "valuenum": pl.Float64, "valueuom": pl.String, "ref_range_lower": pl.Float64,
        "ref_range_upper": pl.Float64, "flag": pl.String, "priority": pl.String, "comments": pl.String})
    d_items = pl.DataFrame({
        "itemid": list(VITALS), "label": ["Heart Rate", "Non Invasive Blood Pressure systolic",
                                          "Non Invasive Blood Pressure diastolic", "Non Invasive Blood Pressure mean",
                                          "Respiratory Rate", "O2 saturation pulseoxymetry", "Temperature Fahrenheit"],
        "abbreviation": ["HR", "NBPs", "NBPd", "NBPm", "RR", "SpO2", "Temperature F"],
        "linksto": ["chartevents"] * 7, "category": ["Routine Vital Signs"] * 7,
        "unitname": [u for _, u in VITALS.values()], "param_type": ["Numeric"] * 7,
        "lownormalvalue": [None] * 7, "highnormalvalue": [None] * 7})
    d_labitems = pl.DataFrame({
        "itemid": list(LABS), "label": ["Lactate", "Creatinine", "White Blood Cells", "Urea Nitrogen", "Sodium",
                                        "Potassium", "Glucose", "Hemoglobin", "Platelet Count", "Bicarbonate"],
        "fluid": ["Blood"] * 10, "category": ["Blood Gas"] + ["Chemistry"] + ["Hematology"] + ["Chemistry"] * 5
        + ["Hematology"] * 2})

    return chartevents, labevents, d_items, d_labitems


def _notes(rng, n, r, subj, hadm, intime, icu_hours, dead):
    """Radiology notes: one before the prediction time for ~80% of stays, a leak trap after."""
    notes = []
    has_note = rng.random(n) < 0.8
    lh, lt = _level(r[:, 1]), _level(r[:, 2])
    for i in range(n):
        seq = 1
        if has_note[i]:
            t = intime[i] + timedelta(hours=float(rng.uniform(1, 40)))
            filler = " ".join(rng.choice(_FILLER, size=int(rng.integers(7, 11)), replace=False))
            head = _LIMITED_HEAD if rng.random() < 0.2 else rng.choice(_HEAD[lh[i]])
            tail = _LIMITED_TAIL if rng.random() < 0.2 else rng.choice(_TAIL[lt[i]])
            text = f"EXAMINATION: CHEST (PORTABLE AP)\nFINDINGS: {head}\n{filler}\n{tail}"
            notes.append((f"{subj[i]}-RR-{seq}", int(subj[i]), int(hadm[i]), "RR", seq, _ts(t),
                          _ts(t + timedelta(minutes=30)), text))
            seq += 1
        if icu_hours[i] > 50 and rng.random() < 0.5:  # after the prediction time: must never be read
            t = intime[i] + timedelta(hours=float(min(icu_hours[i], 49 + rng.uniform(0, 24))))
            notes.append((f"{subj[i]}-RR-{seq}", int(subj[i]), int(hadm[i]), "RR", seq, _ts(t),
                          _ts(t + timedelta(minutes=30)),
                          f"EXAMINATION: CHEST (PORTABLE AP)\n{_LEAK_DEAD if dead[i] else _LEAK_ALIVE}"))
    radiology = pl.DataFrame(notes, orient="row", schema=["note_id", "subject_id", "hadm_id", "note_type",
                                                          "note_seq", "charttime", "storetime", "text"])

    return radiology


def _stored_late(seed, n, subj, hadm, stay, intime, icu_hours, dead, chartevents, labevents, radiology):
    """The trap of records that exist only after the prediction time (48 h) although charted
    before it: for ~30% of the longer stays a radiology note of an exam 0.2-2 h before it, signed
    0.5-6 h after it, and a lactate and a heart rate charted just before it, stored after it, each
    revealing the outcome (`patient expired` / `cleared for transfer`; lactate 39 / 0.2, heart rate
    250 / 60). A loader that cuts on charttime reads them; one that cuts on storetime does not.
    Drawn from a generator of their own and appended, so every other row is unchanged."""
    rng = np.random.default_rng([seed, 48])
    pred = [t + timedelta(hours=48) for t in intime]
    hit = (icu_hours > 50) & (rng.random(n) < 0.3)
    ce, le, notes = [], [], []
    lab_id = int(labevents["labevent_id"].max() or 0) + 1
    for i in np.flatnonzero(hit):
        t_exam = pred[i] - timedelta(hours=float(rng.uniform(0.2, 2)))
        t_sign = pred[i] + timedelta(hours=float(rng.uniform(0.5, 6)))
        notes.append((f"{subj[i]}-RR-late", int(subj[i]), int(hadm[i]), "RR", 99, _ts(t_exam), _ts(t_sign),
                      f"EXAMINATION: CHEST (PORTABLE AP)\n{_LEAK_DEAD if dead[i] else _LEAK_ALIVE}"))
        t_lab = pred[i] - timedelta(hours=float(rng.uniform(0.1, 1)))
        v = 39.0 if dead[i] else 0.2
        le.append((lab_id, int(subj[i]), int(hadm[i]), int(rng.integers(1_000_000, 99_999_999)), 50813, None,
                   _ts(t_lab), _ts(pred[i] + timedelta(hours=float(rng.uniform(0.5, 3)))), f"{v:.2f}", v, "mmol/L",
                   None, None, None, "STAT", None))
        lab_id += 1
        hr = 250.0 if dead[i] else 60.0
        ce.append((int(subj[i]), int(hadm[i]), int(stay[i]), None, _ts(t_lab),
                   _ts(pred[i] + timedelta(minutes=float(rng.uniform(5, 90)))), 220045, f"{hr:.1f}", hr, "bpm", 0))
    return (pl.concat([chartevents, pl.DataFrame(ce, orient="row", schema=chartevents.schema)]),
            pl.concat([labevents, pl.DataFrame(le, orient="row", schema=labevents.schema)]),
            pl.concat([radiology, pl.DataFrame(notes, orient="row", schema=radiology.schema)]))


def _cxr(rng, out, n, r, subj, intime, icu_hours, dead, image_size):
    """MIMIC-CXR-JPG: a frontal + lateral study before the prediction time for ~70% of stays
    (JPEGs under files/), a leak-trap study after it; returns the metadata table."""
    meta = []
    has_cxr = rng.random(n) < 0.7
    study_ids = 50_000_000 + rng.choice(9_000_000, size=2 * n, replace=False)
    for i in range(n):
        studies = []
        if has_cxr[i]:
            studies.append((study_ids[i], intime[i] + timedelta(hours=float(rng.uniform(0.5, 40))), r[i, 3], r[i, 4]))
        if icu_hours[i] > 50 and rng.random() < 0.3:  # leak trap: saturated image after the prediction time
            studies.append((study_ids[n + i], intime[i] + timedelta(hours=49.5), 4.0 if dead[i] else -4.0, 0.0))
        blur = bool(rng.random() < 0.25)
        for sid, t, rd, rn in studies:
            d = out / "files" / f"p{str(subj[i])[:2]}" / f"p{subj[i]}" / f"s{sid}"
            d.mkdir(parents=True, exist_ok=True)
            for view, code, desc in (("AP", "antero-posterior", "CHEST (PORTABLE AP)"), ("LATERAL", "lateral", "")):
                dicom_id = "-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, 5))
                px = _chest_image(rng, rd, rn, image_size, blurred=blur)
                if view == "LATERAL":
                    px = px.T[::-1].copy()
                Image.fromarray(px, mode="L").save(d / f"{dicom_id}.jpg", quality=90)
                meta.append((dicom_id, int(subj[i]), int(sid), desc or "CHEST (PA AND LAT)", view, image_size,
                             image_size, int(t.strftime("%Y%m%d")), float(t.strftime("%H%M%S")) + 0.123,
                             desc or "CHEST (PA AND LAT)", code, "Erect"))
    cxr_meta = pl.DataFrame(meta, orient="row", schema=[
        "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
        "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning"])

    return cxr_meta


def _denser(chartevents: pl.DataFrame, density: float, seed: int) -> pl.DataFrame:
    """chartevents with (density − 1) × its rows added: copies of random rows (same stays and
    times) under itemids no loader asks for, as the real table holds thousands of items per stay
    of which medmix reads seven. What the loader keeps is unchanged; what it must parse grows."""
    k = int(round((density - 1) * chartevents.height))
    if k <= 0:
        return chartevents
    rng = np.random.default_rng(seed + 7919)
    extra = chartevents.sample(n=k, with_replacement=True, seed=seed).with_columns(
        pl.Series("itemid", 226000 + rng.integers(0, 2000, k), dtype=pl.Int64),
        pl.Series("valuenum", np.round(rng.normal(50, 20, k), 1)),
    ).with_columns(pl.col("valuenum").cast(pl.String).alias("value"), pl.lit(None, pl.String).alias("valueuom"))
    return pl.concat([chartevents, extra])


def synth_mimic4(out: str | Path, n: int = 1500, seed: int = 0, image_size: int = 128,
                 density: float = 1.0) -> dict:
    """Write a synthetic MIMIC-IV-layout dataset of `n` patients under `out`; return counts.
    `density` multiplies the chartevents rows per stay (rows of items no loader reads, so the
    cohort is the same; `benchmarks/prepare_scale.py` uses it to reach MIMIC-IV's volume)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    subj = 10_000_000 + rng.choice(9_000_000, size=n, replace=False)
    subj.sort()
    hadm = 20_000_000 + rng.choice(9_000_000, size=n, replace=False)
    age = np.where(rng.random(n) < 0.03, rng.integers(15, 18, n), rng.integers(20, 91, n))
    gender = rng.choice(["F", "M"], size=n)
    anchor_year = rng.integers(2110, 2190, n)
    sev = rng.normal(size=n)
    r = sev[:, None] + rng.normal(size=(n, 5)) * np.array([0.8, 0.9, 0.9, 0.9, 0.9])  # noisy views of sev
    logit = -2.6 + 2.4 * sev + 0.01 * (age - 60)
    dead = rng.random(n) < 1 / (1 + np.exp(-logit))

    admit = [_T0 + timedelta(days=int((y - 2110) * 365 + rng.integers(0, 300)), hours=float(rng.uniform(0, 24)))
             for y in anchor_year]
    # ICU stay: starts a few hours after admission; length in hours
    icu_delay = rng.uniform(1, 12, n)
    icu_hours = np.where(rng.random(n) < 0.12, rng.uniform(10, 44, n), rng.uniform(50, 24 * 14, n))
    early_death = dead & (rng.random(n) < 0.03)  # die before the prediction time (excluded)
    icu_hours = np.where(early_death, rng.uniform(12, 40, n), icu_hours)
    second_stay = rng.random(n) < 0.08
    intime = [a + timedelta(hours=float(d)) for a, d in zip(admit, icu_delay)]
    outtime = [i + timedelta(hours=float(h)) for i, h in zip(intime, icu_hours)]
    post_icu = rng.uniform(4, 96, n)
    disch = [o + timedelta(hours=float(p)) for o, p in zip(outtime, post_icu)]
    disch = [o + timedelta(hours=float(p)) if s else d
             for o, p, s, d in zip(outtime, 48 + post_icu, second_stay, disch)]
    deathtime = [d if x else None for d, x in zip(disch, dead)]

    patients = pl.DataFrame({
        "subject_id": subj, "gender": gender, "anchor_age": age - (np.array([a.year for a in admit]) - anchor_year),
        "anchor_year": anchor_year,
        "anchor_year_group": [f"{2008 + 3 * (i % 4)} - {2010 + 3 * (i % 4)}" for i in range(n)],
        "dod": [d.strftime("%Y-%m-%d") if d else None for d in deathtime],
    })
    admissions = pl.DataFrame({
        "subject_id": subj, "hadm_id": hadm, "admittime": [_ts(a) for a in admit],
        "dischtime": [_ts(d) for d in disch], "deathtime": [_ts(d) for d in deathtime],
        "admission_type": rng.choice(["EW EMER.", "URGENT", "ELECTIVE"], n).tolist(),
        "admit_provider_id": [f"P{rng.integers(10000, 99999)}" for _ in range(n)],
        "admission_location": rng.choice(["EMERGENCY ROOM", "TRANSFER FROM HOSPITAL", "PHYSICIAN REFERRAL"], n).tolist(),
        "discharge_location": [None if x else "HOME" for x in dead],
        "insurance": rng.choice(["Medicare", "Medicaid", "Other"], n).tolist(),
        "language": ["ENGLISH"] * n, "marital_status": rng.choice(["SINGLE", "MARRIED", "WIDOWED"], n).tolist(),
        "race": rng.choice(["WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO", "ASIAN"], n).tolist(),
        "edregtime": [None] * n, "edouttime": [None] * n, "hospital_expire_flag": dead.astype(int),
    })
    stay = 30_000_000 + rng.choice(9_000_000, size=2 * n, replace=False)
    icu_rows = []
    for i in range(n):
        unit = rng.choice(["Medical Intensive Care Unit (MICU)", "Surgical Intensive Care Unit (SICU)",
                           "Cardiac Vascular Intensive Care Unit (CVICU)"])
        icu_rows.append((int(subj[i]), int(hadm[i]), int(stay[i]), unit, unit, _ts(intime[i]), _ts(outtime[i]),
                         icu_hours[i] / 24))
        if second_stay[i]:
            t1 = outtime[i] + timedelta(hours=12)
            icu_rows.append((int(subj[i]), int(hadm[i]), int(stay[n + i]), unit, unit, _ts(t1),
                             _ts(t1 + timedelta(hours=24)), 1.0))
    icustays = pl.DataFrame(icu_rows, schema=["subject_id", "hadm_id", "stay_id", "first_careunit",
                                              "last_careunit", "intime", "outtime", "los"], orient="row")

    chartevents, labevents, d_items, d_labitems = _events(rng, n, r, subj, hadm, stay, intime, icu_hours)
    radiology = _notes(rng, n, r, subj, hadm, intime, icu_hours, dead)
    chartevents, labevents, radiology = _stored_late(seed, n, subj, hadm, stay, intime, icu_hours, dead,
                                                     chartevents, labevents, radiology)
    cxr_meta = _cxr(rng, out, n, r, subj, intime, icu_hours, dead, image_size)
    chartevents = _denser(chartevents, density, seed)

    _write_csv_gz(patients, out / "hosp" / "patients.csv.gz")
    _write_csv_gz(admissions, out / "hosp" / "admissions.csv.gz")
    _write_csv_gz(labevents, out / "hosp" / "labevents.csv.gz")
    _write_csv_gz(d_labitems, out / "hosp" / "d_labitems.csv.gz")
    _write_csv_gz(icustays, out / "icu" / "icustays.csv.gz")
    _write_csv_gz(chartevents, out / "icu" / "chartevents.csv.gz")
    _write_csv_gz(d_items, out / "icu" / "d_items.csv.gz")
    _write_csv_gz(radiology, out / "note" / "radiology.csv.gz")
    _write_csv_gz(cxr_meta, out / "mimic-cxr-2.0.0-metadata.csv.gz")
    (out / "SOURCE.md").write_text(
        f"Synthetic data written by `medmix synth --kind mimic4 --n {n} --seed {seed} --density {density}`: MIMIC-IV layout, "
        "no real patient.\n")
    return {"patients": n, "icustays": icustays.height, "chartevents": chartevents.height,
            "labevents": labevents.height, "radiology_notes": radiology.height, "cxr_images": cxr_meta.height,
            "deaths": int(dead.sum())}
