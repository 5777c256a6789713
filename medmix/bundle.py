"""Deploy bundles: the student of a run, exported without anything of the teachers.

A bundle is a folder with `weights.safetensors` (fusion weights and the train-split
standardisation of every expert; no pickle) and `bundle.json` (method, fusion config, the expert
list per modality with model name, weights hash and preprocessing hash, label name, decision
threshold). `predict` needs only the bundle and the experts' embedding caches.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file

from medmix import __version__
from medmix.embed import embed_with_fit, fit_path
from medmix.encoders.cache import read_attrs, read_cache, read_ids
from medmix.inputs import Caches, standardise
from medmix.io import MedmixError, atomic_path, write_json
from medmix.methods import MethodSpec
from medmix.metrics import thresholds
from medmix.model import FusionConfig, weight_columns
from medmix.run import Run, predict_student
from medmix.tasks import Task

BUNDLE_VERSION = 2   # 2: `temperature` (post-hoc calibration); version 1 bundles still load (T = 1)
READABLE_VERSIONS = (1, 2)


def export(run: str | Path, out: str | Path, caches: Caches | None = None, results: str | Path = "results") -> dict:
    """Write the bundle of one run directory (model.pt + predictions.parquet). `caches`: the run's
    expert caches (default: the workflow's layout under `results`)."""
    r = Run.load(run)
    out = Path(out)
    caches = caches or Caches.under(results, r.dataset)
    experts = {}
    for m, slugs in r.experts.items():
        experts[m] = []
        for slug in slugs:
            h5 = caches[m, slug]
            a = read_attrs(h5)
            e = {k: a.get(k) for k in ("encoder", "kind", "model_name", "weights_hash", "preprocessing_hash",
                                       "spec_hash")} | {"dim": int(a["dim"])}
            # what `predict --cohort` needs to run this expert on raw inputs: its config and, for
            # encoders fitted on the train split, the fit (never refitted on new data)
            e["spec"] = json.loads(a["spec"]) if isinstance(a.get("spec"), str) else None
            e["fit_state"] = json.loads(a["fit_state"]) if isinstance(a.get("fit_state"), str) else {}
            if fit_path(h5).exists():
                e["fit_file"] = f"fit/{m}.{slug}.npz"
                (out / "fit").mkdir(parents=True, exist_ok=True)
                with atomic_path(out / e["fit_file"]) as tmp:
                    shutil.copyfile(fit_path(h5), tmp)
            experts[m].append(e)
    task = r.task
    pred = pl.read_parquet(r.path / "predictions.parquet").filter(pl.col("split") == "val")
    thr = thresholds(task.kind, *task.read_predictions(pred))
    tensors = {f"model.{k}": v.contiguous() for k, v in r.ckpt["state_dict"].items()}
    for m, stats in r.ckpt["norm"].items():
        for k, (mu, sd) in enumerate(stats):
            tensors[f"norm.{m}.{k}.mean"] = mu.contiguous()
            tensors[f"norm.{m}.{k}.sd"] = sd.contiguous()
    meta = {
        "bundle_version": BUNDLE_VERSION, "medmix_version": __version__, "method": r.name,
        "arch": r.method.to_dict(), "fusion": dataclasses.asdict(r.fusion),
        "dims": r.dims, "experts": experts, "label": f"y_{r.job.task}", "dataset": r.dataset,
        "task": task.to_spec(), "labels": task.labels, "seed": r.seed, "threshold": thr[0] if thr else None,
        "thresholds": thr, "threshold_rule": "max F1 on the validation split, per label (binary, multilabel)",
        "temperature": float(r.ckpt.get("temperature", 1.0)),
    }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "weights.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json(out / "bundle.json", meta)
    return meta


def load(bundle: str | Path) -> tuple[dict, dict]:
    """(metadata, tensors) of a bundle; safetensors only, so loading runs no code."""
    bundle = Path(bundle)
    if not (bundle / "bundle.json").exists():
        raise MedmixError(f"{bundle}: not a medmix bundle (no bundle.json)")
    meta = json.loads((bundle / "bundle.json").read_text())
    if meta.get("bundle_version") not in READABLE_VERSIONS:
        raise MedmixError(f"{bundle}/bundle.json: bundle_version {meta.get('bundle_version')} is not one this medmix "
                          f"reads ({', '.join(map(str, READABLE_VERSIONS))})")
    try:
        return meta, load_file(str(bundle / "weights.safetensors"))
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: not a safetensors file
        raise MedmixError(f"{bundle}/weights.safetensors: refused: not a safetensors file ({type(e).__name__}: "
                          f"{str(e)[:200]}); bundles never load pickles: re-export it with `medmix export`") from None


def predict(bundle: str | Path, embeddings: str | Path, out: str | Path | None = None) -> pl.DataFrame:
    """Predict from the experts' caches under `embeddings/{modality}/{encoder}.h5`."""
    meta, tensors = load(bundle)
    embeddings = Path(embeddings)
    X, M, ids = {}, {}, None
    for m, exps in meta["experts"].items():
        xs, ms = [], []
        for k, e in enumerate(exps):
            path = embeddings / m / f"{e['encoder']}.h5"
            emb, present = read_cache(path, expect={"weights_hash": e["weights_hash"],
                                                    "preprocessing_hash": e["preprocessing_hash"]})
            these = read_ids(path)
            if ids is None:
                ids = these
            elif these != ids:
                raise MedmixError(f"{path}: sample ids differ from the other caches of this prediction")
            mu, sd = tensors[f"norm.{m}.{k}.mean"].numpy(), tensors[f"norm.{m}.{k}.sd"].numpy()
            xs.append(torch.from_numpy(standardise(emb, present, mu, sd)))
            ms.append(torch.from_numpy(present))
        X[m], M[m] = xs, torch.stack(ms, 1)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    t = meta.get("task") or {"name": meta["label"][2:], "type": "binary", "columns": [meta["label"]]}
    task = Task.from_spec(t["name"], t)
    p, o = predict_student(MethodSpec.from_dict(meta["arch"]), meta["dims"], FusionConfig(**meta["fusion"]), state,
                           X, M, task, float(meta.get("temperature", 1.0)))
    p = p.astype(np.float64)
    thr = meta.get("thresholds") or [meta.get("threshold", 0.5)]
    cols: dict = {"sample_id": ids}
    if task.kind == "binary":
        cols.update({"prob": p, meta["label"] + "_pred": (p >= thr[0]).astype(np.int8)})
    elif task.kind == "multilabel":
        for i, lab in enumerate(task.labels):
            cols[f"prob__{lab}"] = p[:, i]
            cols[f"pred__{lab}"] = (p[:, i] >= thr[i]).astype(np.int8)
    elif task.kind == "multiclass":
        cols.update({f"prob__{c}": p[:, i] for i, c in enumerate(task.labels)})
        cols["pred"] = np.array(task.labels)[p.argmax(1)]
    else:
        cols["risk"] = p
    cols.update(weight_columns(o, {m: [e["encoder"] for e in exps] for m, exps in meta["experts"].items()}))
    df = pl.DataFrame(cols)
    if out:
        with atomic_path(out) as tmp:
            df.write_parquet(tmp)
    return df


def predict_raw(bundle: str | Path, cohort: str | Path, out: str | Path | None = None,
                device: str | None = None, work: str | Path | None = None) -> pl.DataFrame:
    """Predict from raw inputs: run the bundle's experts (never a teacher) on a cohort made by
    `medmix prepare` — fitted experts apply their stored fit — then predict from those caches.
    `work`: where the caches go (default: a temporary folder, removed afterwards)."""
    meta, _ = load(bundle)
    bundle = Path(bundle)
    tmp = None if work else tempfile.TemporaryDirectory(prefix="medmix-predict-")
    emb_dir = Path(work or tmp.name)
    try:
        for m, exps in meta["experts"].items():
            for e in exps:
                if not e.get("spec"):
                    raise MedmixError(f"{bundle}/bundle.json: expert {m}/{e['encoder']} has no encoder config "
                                      "(bundle exported before raw-input prediction; re-export it)")
                fit = bundle / e["fit_file"] if e.get("fit_file") else None
                embed_with_fit(cohort, m, e["encoder"], e["spec"], emb_dir / m / f"{e['encoder']}.h5",
                               e.get("fit_state") or {}, fit, device=device)
        return predict(bundle, emb_dir, out)
    finally:
        if tmp is not None:
            tmp.cleanup()
