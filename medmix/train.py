"""The train stage: cached embeddings → one fitted fusion network per (dataset, method, seed).

Cached tensors are held in memory and batched by index (no per-sample Python in the loop).
AdamW, early stopping on validation AUROC (validation loss when AUROC is undefined), a progress
bar, deterministic under a seed on CPU. Teacher embeddings are read for training samples only.
Outputs (each written atomically): model.pt (weights + the config that made it), metrics.json,
predictions.parquet (probabilities and the per-sample weights α, β).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from medmix import __version__
from medmix.data import cohort as cohort_mod
from medmix.encoders.cache import cohort_hash, read_cache
from medmix.io import MedmixError, atomic_path, write_json
from medmix.methods import method_spec
from medmix.metrics import binary_metrics
from medmix.model import create_model, fusion_config

log = logging.getLogger("medmix.train")


@dataclass
class Inputs:
    """One role's cached embeddings, standardised, per modality."""
    X: dict = field(default_factory=dict)      # m -> list of (N, d_mk) float32 tensors
    M: dict = field(default_factory=dict)      # m -> (N, K_m) bool presence
    dims: dict = field(default_factory=dict)   # m -> [d_mk]
    slugs: dict = field(default_factory=dict)  # m -> [encoder slug]
    norm: dict = field(default_factory=dict)   # m -> [(mean, sd)] train-split statistics
    dropped: list = field(default_factory=list)


def load_role(results: Path, spec: dict, cohort: pl.DataFrame, role: str, mods: list[str],
               rows: np.ndarray | None = None) -> Inputs:
    """Read the caches of one role (experts|teachers) of the given modalities.

    Each embedding is standardised with its train-split statistics; absent rows are 0 (= the
    train mean). `rows`: keep presence only on these rows (teachers: train only).
    """
    ids = cohort["sample_id"].to_list()
    is_train = (cohort["split"] == "train").to_numpy()
    inp = Inputs()
    for m in mods:
        h = cohort_hash(ids, cohort[m].to_list())
        xs, ms, kept, stats = [], [], [], []
        for slug in spec["modalities"][m][role]:
            path = results / spec["dataset"] / "embeddings" / m / f"{slug}.h5"
            emb, present = read_cache(path, expect={"encoder": slug, "spec_hash": spec["encoders"][slug],
                                                    "cohort_hash": h}, ids=ids)
            if rows is not None:
                present = present & rows
            fit = present & is_train
            if emb.shape[1] == 0 or not fit.any():
                inp.dropped.append(f"{m}/{slug}: no embedding on the train split")
                continue
            mu = emb[fit].mean(0)
            sd = emb[fit].std(0)
            sd = np.where(sd > 1e-6, sd, 1.0)
            z = np.where(present[:, None], (emb - mu) / sd, 0.0).astype(np.float32)
            xs.append(torch.from_numpy(z))
            ms.append(torch.from_numpy(present))
            kept.append(slug)
            stats.append((torch.from_numpy(mu), torch.from_numpy(sd.astype(np.float32))))
        if xs:
            inp.X[m], inp.M[m], inp.dims[m] = xs, torch.stack(ms, 1), [x.shape[1] for x in xs]
            inp.slugs[m], inp.norm[m] = kept, stats
        elif role == "experts":
            inp.dropped.append(f"{m}: no expert has an embedding on the train split; modality left out")
    return inp


def make_batch(X, M, idx, TX=None, TM=None) -> dict:
    b = {"x": {m: [x[idx] for x in xs] for m, xs in X.items()}, "mask": {m: v[idx] for m, v in M.items()}}
    if TX:
        b["tx"] = {m: [x[idx] for x in xs] for m, xs in TX.items()}
        b["tmask"] = {m: v[idx] for m, v in TM.items()}
    return b


def weight_columns(out: dict, slugs: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Per-sample expert weights α (`alpha_<modality>_<encoder>`) and modality weights β (`beta_<modality>`)."""
    cols = {}
    for m, a in (out.get("alpha") or {}).items():
        for k, slug in enumerate(slugs[m]):
            cols[f"alpha_{m}_{slug}"] = a[:, k].float().cpu().numpy().astype(np.float64)
    if out.get("beta") is not None:
        for i, m in enumerate(slugs):
            cols[f"beta_{m}"] = out["beta"][:, i].float().cpu().numpy().astype(np.float64)
    return cols


def _val_score(y: np.ndarray, p: np.ndarray, loss: float) -> float:
    ok = ~np.isnan(y)
    if ok.any() and len(np.unique(y[ok])) == 2:
        from sklearn.metrics import roc_auc_score
        return float(roc_auc_score(y[ok], p[ok]))
    return -loss


def _best_single_expert(inp: Inputs, y: np.ndarray, split: np.ndarray) -> dict[str, str]:
    """Keep, per modality, the expert whose logistic-regression probe has the best validation AUROC."""
    from sklearn.linear_model import LogisticRegression
    chosen = {}
    for m in list(inp.X):
        scores = []
        for k, x in enumerate(inp.X[m]):
            pres = inp.M[m][:, k].cpu().numpy()
            tr = pres & (split == "train") & ~np.isnan(y)
            va = pres & (split == "val") & ~np.isnan(y)
            score = -np.inf
            if len(np.unique(y[tr])) == 2 and len(np.unique(y[va])) == 2:
                clf = LogisticRegression(C=0.1, max_iter=2000).fit(x.numpy()[tr], y[tr])
                score = _val_score(y[va], clf.predict_proba(x.numpy()[va])[:, 1], 0.0)
            scores.append(score)
        k = int(np.argmax(scores))
        chosen[m] = inp.slugs[m][k]
        inp.X[m], inp.dims[m], inp.slugs[m], inp.norm[m] = [inp.X[m][k]], [inp.dims[m][k]], [chosen[m]], [inp.norm[m][k]]
        inp.M[m] = inp.M[m][:, k:k + 1]
    return chosen


def _fit_logreg(inp: Inputs, y: np.ndarray, split: np.ndarray, seed: int) -> tuple[np.ndarray, dict, dict]:
    """logreg_concat: scikit-learn logistic regression on every expert embedding (zero-filled),
    L2 strength chosen on validation AUROC."""
    from sklearn.linear_model import LogisticRegression
    x = torch.cat([xx for m in inp.X for xx in inp.X[m]], 1).numpy()
    tr = (split == "train") & ~np.isnan(y)
    va = split == "val"
    best = None
    for c in (0.001, 0.01, 0.1, 1.0):
        clf = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x[tr], y[tr])
        score = _val_score(y[va], clf.predict_proba(x[va])[:, 1], 0.0)
        if best is None or score > best[0] + 1e-9:
            best = (score, c, clf)
    _, c, clf = best
    state = {"coef": torch.from_numpy(clf.coef_.astype(np.float32)),
             "intercept": torch.from_numpy(clf.intercept_.astype(np.float32))}
    return clf.predict_proba(x)[:, 1], state, {"C": c, "n_params": int(clf.coef_.size + clf.intercept_.size)}


def train_run(spec: dict, seed: int, out: str | Path, results: str | Path = "results",
              device: str | None = None, progress: bool = True) -> dict:
    """Train one (dataset, method, seed) on cached embeddings; write model.pt, metrics.json, predictions."""
    t_start = time.perf_counter()
    out, results = Path(out), Path(results)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    method = method_spec(spec["method"])
    tcfg = spec["train"]
    cfg = fusion_config(method, tcfg)
    cohort = cohort_mod.read(results / spec["dataset"] / "cohort.parquet")
    ycol = f"y_{spec['task']}"
    if ycol not in cohort.columns:
        raise MedmixError(f"{results / spec['dataset'] / 'cohort.parquet'}: no label column '{ycol}'")
    mods = sorted(m for m in spec["modalities"] if m in cohort.columns)  # canonical order: same model from CLI or API
    if method.get("only"):
        if method["only"] not in mods:
            raise MedmixError(f"method {spec['method']}: modality '{method['only']}' is not an input of "
                              f"dataset {spec['dataset']} ({', '.join(mods)})")
        mods = [method["only"]]
    split = cohort["split"].to_numpy()
    y = cohort[ycol].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    role = method.get("inputs", "experts")  # teacher_deployed: the teachers are its inputs, on every split
    if role == "teachers":
        mods = [m for m in mods if spec["modalities"][m]["teachers"]]
    exp = load_role(results, spec, cohort, role, mods)
    drop = None
    if spec.get("drop"):  # robustness sweeps: modalities removed from training samples (medmix/robustness.py)
        from medmix.robustness import TrainDrop
        drop = TrainDrop(spec, cohort, seed)
        split = drop.apply(exp, split)
    dropped = list(exp.dropped)
    if not exp.X:
        raise MedmixError(f"dataset {spec['dataset']}: no modality has any {role[:-1]} embedding on the train split")
    info: dict = {"train_drop": drop.summary} if drop else {}
    if method.get("single_expert"):
        info["single_expert"] = _best_single_expert(exp, y, split)
    if method["arch"] == "logreg":
        p_all, state, more = _fit_logreg(exp, y, split, seed)
        o_all: dict = {}
        info.update(more)
    else:
        tea = None
        if method.get("teacher"):
            tm = [m for m in exp.X if spec["modalities"][m]["teachers"]]
            tea = load_role(results, spec, cohort, "teachers", tm, rows=split == "train")
            if drop:
                drop.apply(tea, split, relabel=False)
            dropped += tea.dropped
        p_all, o_all, state, more = _fit_neural(spec, method, cfg, exp, tea, y, split, seed, device, progress)
        info.update(more)

    n_boot = tcfg["bootstrap"]
    metrics = {
        "dataset": spec["dataset"], "method": spec["method"], "seed": seed, "task": spec["task"],
        "val": binary_metrics(y[split == "val"], p_all[split == "val"]),
        "test": binary_metrics(y[split == "test"], p_all[split == "test"], n_boot=n_boot, seed=seed),
        "modalities": list(exp.dims), "inputs": exp.slugs, "left_out": dropped, "device": device,
        **{k: v for k, v in info.items() if k != "history"},
        "seconds": round(time.perf_counter() - t_start, 2), "medmix_version": __version__,
    }
    cols = {"sample_id": cohort["sample_id"], "split": cohort["split"],
            "y": pl.Series(y), "prob": pl.Series(p_all.astype(np.float64))}
    cols.update(weight_columns(o_all, exp.slugs))
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "predictions.parquet") as tmp:
        pl.DataFrame(cols).write_parquet(tmp)
    with atomic_path(out / "model.pt") as tmp:
        torch.save({"state_dict": state, "spec": spec, "seed": seed, "dims": exp.dims, "method": method,
                    "experts": exp.slugs, "norm": exp.norm, "history": info.get("history", []),
                    "medmix_version": __version__}, tmp)
    write_json(out / "metrics.json", metrics)
    return metrics


def _fit_neural(spec, method, cfg, exp: Inputs, tea: Inputs | None, y, split, seed, device, progress):
    """AdamW with early stopping on the validation metric; returns (probabilities, outputs, student state, info)."""
    tcfg = spec["train"]
    # the whole cache lives on the training device; batches are index gathers
    X = {m: [x.to(device) for x in xs] for m, xs in exp.X.items()}
    M = {m: v.to(device) for m, v in exp.M.items()}
    TX = TM = tdims = None
    if tea is not None and tea.X:
        TX = {m: [x.to(device) for x in xs] for m, xs in tea.X.items()}
        TM = {m: v.to(device) for m, v in tea.M.items()}
        tdims = tea.dims
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    model = create_model(method, exp.dims, cfg, teacher_dims=tdims).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    yt = torch.from_numpy(y.astype(np.float32)).to(device)
    tr = torch.from_numpy(np.flatnonzero((split == "train") & ~np.isnan(y))).to(device)
    va = np.flatnonzero(split == "val")
    bs = tcfg["batch_size"]
    amp = device.startswith("cuda")  # bf16 autocast on GPU; full precision on CPU (deterministic)

    def predict(idx: np.ndarray) -> tuple[np.ndarray, float, dict]:
        model.eval()
        ix = torch.from_numpy(idx).to(device)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            o = model(make_batch(X, M, ix), train=False)
            loss, _ = model.loss(o, yt[ix])
        return torch.sigmoid(o["logit"].float()).cpu().numpy(), float(loss), o

    best, best_state, best_epoch, bad = -np.inf, None, 0, 0
    history = []
    bar = tqdm(range(tcfg["max_epochs"]), desc=f"train {spec['dataset']}/{spec['method']}/seed{seed}",
               disable=not progress, mininterval=2)
    for epoch in bar:
        model.train()
        perm = tr[torch.randperm(len(tr), generator=gen, device=device)]
        tot = 0.0
        for s in range(0, len(perm), bs):
            idx = perm[s:s + bs]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                o = model(make_batch(X, M, idx, TX, TM), train=True, gen=gen)
                loss, parts = model.loss(o, yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
        p_va, l_va, _ = predict(va)
        score = _val_score(y[va], p_va, l_va)
        history.append({"epoch": epoch, "train_loss": tot / max(len(tr), 1), "val_loss": l_va, "val_score": score})
        bar.set_postfix(val=f"{score:.3f}")
        if score > best + 1e-6:
            best, best_state, best_epoch, bad = score, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= tcfg["patience"]:
                break
    model.load_state_dict(best_state)
    p_all, _, o_all = predict(np.arange(len(y)))
    student = {k: v.cpu() for k, v in model.state_dict().items() if not k.startswith(("teacher", "align"))}
    info = {"best_epoch": best_epoch, "epochs": len(history), "history": history,
            "n_params": sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("teacher", "align")))}
    return p_all, o_all, student, info
