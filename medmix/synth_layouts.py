"""Small synthetic raw datasets in the real layouts of OpenI, MIMIC-III and a ccRCC folder.

They exist so that CI covers each loader on the files it reads in the wild (names, headers,
formats), with planted traps: images of another study, events after the prediction time, rows
that a correct loader must ignore. The MIMIC-IV generator with the planted signal is medmix/synth.py.
"""

from __future__ import annotations

import gzip
import io
import json
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


def synth_mimic3(out: str | Path, n: int = 60, seed: int = 0) -> dict:
    from medmix.synth_mimic3 import synth
    return synth(out, n=n, seed=seed)


def synth_ccrcc(out: str | Path, n: int = 40, seed: int = 0) -> dict:
    """A ccRCC folder (clinical, genomics, CT NIfTI, MRI DICOM series, WSI features): medmix.data.ccrcc.synth."""
    from medmix.data.ccrcc import synth
    return synth(out, n=n, seed=seed)
