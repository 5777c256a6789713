"""The train stage: cached embeddings → one fitted fusion network per (dataset, method, seed).

Cached tensors are held in memory and batched by index (no per-sample Python in the loop).
AdamW, early stopping on validation AUROC (validation loss when AUROC is undefined), a progress
bar, deterministic under a seed on CPU. Teacher embeddings are read for the train rows (and the
validation rows, for the teacher branch's own early stop and its recorded score), never for test.
Outputs (each written atomically): model.pt (weights + the config that made it), metrics.json,
predictions.parquet (probabilities and the per-sample weights α, β).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from medmix import __version__
from medmix.config import TrainJob, TrainParams
from medmix.data import cohort as cohort_mod
from medmix.inputs import Caches, Inputs, load_role
from medmix.io import MedmixError, atomic_path, write_json
from medmix.masks import TrainDrop, dataset_modalities
from medmix.methods import MethodSpec, method_spec
from medmix.metrics import primary_score, task_metrics, thresholds
from medmix.model import create_model, fusion_config, weight_columns
from medmix.model.losses import cox_loss
from medmix.model.registry import model_class
from medmix.tasks import Task

log = logging.getLogger("medmix.train")


def make_batch(X, M, idx, TX=None, TM=None, pre=None) -> dict:
    """A batch of rows `idx` (kept as `row`): expert inputs, teacher inputs (TX, TM) and per-row
    tensors `pre` (a frozen teacher's outputs), all index gathers."""
    b = {"x": {m: [x[idx] for x in xs] for m, xs in X.items()}, "mask": {m: v[idx] for m, v in M.items()},
         "row": idx}
    if TX:
        b["tx"] = {m: [x[idx] for x in xs] for m, xs in TX.items()}
        b["tmask"] = {m: v[idx] for m, v in TM.items()}
    if pre:
        b.update({k: v[idx] for k, v in pre.items()})
    return b


class FusedAdamW:
    """torch.optim.AdamW(fused=True), called directly: the same kernel (`torch._fused_adamw_`: one
    op updates every parameter tensor) on the same state, so the same numbers bit for bit (tested
    against torch.optim.AdamW), without the 2.5 s import of torch._dynamo that every torch.optim
    optimizer pays in its first process (once per train job; measured in the README). What the
    trainer needs only: `step()` without a closure, `zero_grad()` always to None."""

    def __init__(self, params, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        self.lr, self.weight_decay, self.betas, self.eps = float(lr), float(weight_decay), betas, eps
        self.state: dict = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        groups: dict = {}
        for p in self.params:
            if p.grad is None:
                continue
            st = self.state.get(p)
            if st is None:  # as torch.optim.Adam._init_group with fused=True
                st = self.state[p] = (torch.zeros((), dtype=torch.float32, device=p.device),
                                      torch.zeros_like(p, memory_format=torch.preserve_format),
                                      torch.zeros_like(p, memory_format=torch.preserve_format))
            g = groups.setdefault((p.device, p.dtype), ([], [], [], [], []))
            for lst, t in zip(g, (p, p.grad, st[1], st[2], st[0])):
                lst.append(t)
        for ps, grads, m1, m2, steps in groups.values():
            torch._foreach_add_(steps, 1)
            torch._fused_adamw_(ps, grads, m1, m2, [], steps, amsgrad=False, lr=self.lr, beta1=self.betas[0],
                                beta2=self.betas[1], weight_decay=self.weight_decay, eps=self.eps, maximize=False,
                                grad_scale=None, found_inf=None)


def adamw(params, lr: float, weight_decay: float, device: str = "cpu"):
    """AdamW; on CPU and CUDA its fused kernel (FusedAdamW), instead of a dozen small ops per
    tensor (measured by `benchmarks/train_throughput.py`; figures in the README)."""
    if device.split(":")[0] in ("cpu", "cuda"):
        return FusedAdamW(params, lr, weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def train_epoch(model, opt, data: tuple, yt: torch.Tensor, tr: torch.Tensor, bs: int,
                gen: torch.Generator, amp: bool = False, parts: dict | None = None) -> float:
    """One epoch over the training rows `tr` in a seeded random order; batches are index gathers
    from the tensors in `data` = (X, M, TX, TM[, pre]) (no per-sample Python). Returns the summed
    loss; `parts` (if given) accumulates each loss term's sum over samples."""
    model.train()
    perm = tr[torch.randperm(len(tr), generator=gen, device=tr.device)]
    tot = 0.0
    for s in range(0, len(perm), bs):
        idx = perm[s:s + bs]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            o = model(make_batch(*data[:2], idx, *data[2:]), train=True, gen=gen)
            loss, part = model.loss(o, yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot += loss.item() * len(idx)
        if parts is not None:
            for k, v in part.items():
                parts[k] = parts.get(k, 0.0) + v * len(idx)
    return tot


def _val_score(kind: str, y: np.ndarray, p: np.ndarray, loss: float) -> float:
    """Primary validation metric of the task (medmix.metrics.PRIMARY); −loss when it is undefined."""
    v = primary_score(kind, y, p)
    return -loss if np.isnan(v) else v


def _fit_linear(task: Task, x: np.ndarray, y: np.ndarray, C: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A linear model of the task's outputs on x (rows with a label): (coef (n_out, d), intercept (n_out,)),
    logits = x @ coef.T + intercept. Logistic regression (scikit-learn) for binary, per label for
    multilabel (a label with one class in train gets its log-odds as a constant), multinomial for
    multiclass; an L2-penalised linear Cox model (L-BFGS) for survival."""
    from sklearn.linear_model import LogisticRegression
    n_out, d = task.n_out, x.shape[1]
    coef, icpt = np.zeros((n_out, d)), np.zeros(n_out)
    if task.kind == "survival":
        xt, yt = torch.from_numpy(x).double(), torch.from_numpy(y).double()
        w = torch.zeros(d, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = cox_loss(xt @ w, yt[:, 0], yt[:, 1]) + (w @ w) / (2 * C * len(x))
            loss.backward()
            return loss
        opt.step(closure)
        coef[0] = w.detach().numpy()
        return coef, icpt
    cols = [y[:, i] for i in range(n_out)] if task.kind == "multilabel" else [y]
    for i, yi in enumerate(cols):
        ok = ~np.isnan(yi)
        classes = np.unique(yi[ok])
        if task.kind != "multiclass" and len(classes) < 2:
            prev = float(np.clip(yi[ok].mean() if ok.any() else 0.5, 1e-4, 1 - 1e-4))
            icpt[i] = np.log(prev / (1 - prev))
            continue
        clf = LogisticRegression(C=C, max_iter=3000, random_state=seed).fit(x[ok], yi[ok].astype(int))
        if task.kind == "multiclass":
            icpt[:] = -30.0  # a class never seen in train is never predicted
            k = clf.classes_.astype(int)
            if len(k) == 2:  # scikit-learn stores one row for two classes
                coef[k[1]], icpt[k[1]], icpt[k[0]] = clf.coef_[0], clf.intercept_[0], 0.0
            else:
                coef[k], icpt[k] = clf.coef_, clf.intercept_
        else:
            coef[i], icpt[i] = clf.coef_[0], clf.intercept_[0]
    return coef, icpt


def _linear_predict(task: Task, x: np.ndarray, coef: np.ndarray, icpt: np.ndarray) -> np.ndarray:
    return task.predictions(x @ coef.T + icpt)


def _best_single_expert(inp: Inputs, task: Task, y: np.ndarray, split: np.ndarray) -> dict[str, str]:
    """Keep, per modality, the expert whose linear probe has the best validation metric."""
    chosen = {}
    lab = task.labelled(y)
    for m in list(inp.X):
        scores = []
        for k, x in enumerate(inp.X[m]):
            pres = inp.M[m][:, k].cpu().numpy()
            tr, va = pres & (split == "train") & lab, pres & (split == "val")
            score = -np.inf
            if tr.sum() >= 2 and va.any():
                coef, icpt = _fit_linear(task, x.numpy()[tr], y[tr], 0.1, 0)
                v = primary_score(task.kind, y[va], _linear_predict(task, x.numpy()[va], coef, icpt))
                score = -np.inf if np.isnan(v) else v
            scores.append(score)
        k = int(np.argmax(scores))
        chosen[m] = inp.slugs[m][k]
        inp.X[m], inp.dims[m], inp.slugs[m], inp.norm[m] = [inp.X[m][k]], [inp.dims[m][k]], [chosen[m]], [inp.norm[m][k]]
        inp.M[m] = inp.M[m][:, k:k + 1]
    return chosen


def _fit_logreg(inp: Inputs, task: Task, y: np.ndarray, split: np.ndarray, seed: int,
                C: float | None = None) -> tuple[np.ndarray, dict, dict]:
    """logreg_concat: a linear model (logistic regression; Cox for survival) on every expert
    embedding (zero-filled), L2 strength `C` (tuned), else the best of four on the validation metric."""
    x = torch.cat([xx for m in inp.X for xx in inp.X[m]], 1).numpy()
    tr = (split == "train") & task.labelled(y)
    va = split == "val"
    best = None
    for c in ((float(C),) if C is not None else (0.001, 0.01, 0.1, 1.0)):
        coef, icpt = _fit_linear(task, x[tr], y[tr], c, seed)
        score = primary_score(task.kind, y[va], _linear_predict(task, x[va], coef, icpt))
        score = -np.inf if np.isnan(score) else score
        if best is None or score > best[0] + 1e-9:
            best = (score, c, coef, icpt)
    _, c, coef, icpt = best
    state = {"coef": torch.from_numpy(coef.astype(np.float32)), "intercept": torch.from_numpy(icpt.astype(np.float32))}
    return _linear_predict(task, x, coef, icpt), state, {"C": c, "n_params": int(coef.size + icpt.size),
                                                         "logits": x @ coef.T + icpt}


@dataclass
class Shared:
    """What every seed of a train job reads alike: the cohort, labels, split and the standardised
    inputs (a train-time drop, the single-expert choice and, under a drop, the teachers are per seed)."""
    method: MethodSpec
    task: Task
    cohort: pl.DataFrame
    y: np.ndarray
    split: np.ndarray
    exp: Inputs
    tea: Inputs | None            # teachers on the train and val rows (None under a drop: read per seed)


@dataclass
class Prepared:
    """A train job's inputs for one seed: what every fit of it (a seed, a tuning trial) starts from."""
    job: TrainJob
    method: MethodSpec
    task: Task
    cohort: pl.DataFrame
    y: np.ndarray
    split: np.ndarray             # train / val / test (train_excluded: a drop left the sample no input)
    exp: Inputs                   # the inputs at inference: experts (teacher_deployed: teachers)
    tea: Inputs | None            # teacher embeddings, train and val rows (methods with a teacher branch)
    dropped: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


def _teacher_mods(job: TrainJob, exp: Inputs) -> list[str]:
    return [m for m in exp.X if job.modalities[m]["teachers"]]


def read_shared(job: TrainJob, cohort: Path, caches: Caches) -> Shared:
    """Read and standardise the caches a job's method reads (once per job, whatever its seeds)."""
    method = method_spec(job.method)
    co = cohort_mod.read(cohort)
    task = Task.of_cohort(cohort, job.task, co)
    mods = dataset_modalities(job.modalities, co)  # canonical order: same model from CLI or API
    if method.only:
        if method.only not in mods:
            raise MedmixError(f"method {job.method}: modality '{method.only}' is not an input of "
                              f"dataset {job.dataset} ({', '.join(mods)})")
        mods = [method.only]
    split = co["split"].to_numpy()
    role = method.inputs  # teacher_deployed: the teachers are its inputs, on every split
    if role == "teachers":
        mods = [m for m in mods if job.modalities[m]["teachers"]]
    exp = load_role(caches, job, co, role, mods)
    if not exp.X:
        raise MedmixError(f"dataset {job.dataset}: no modality has any {role[:-1]} embedding on the train split")
    tea = None
    if _teacher_branch(method) and not job.drop:
        tea = load_role(caches, job, co, "teachers", _teacher_mods(job, exp), rows=np.isin(split, ("train", "val")))
    return Shared(method, task, co, task.targets(co), split, exp, tea)


def prepare(job: TrainJob, seed: int, cohort: Path, caches: Caches, shared: Shared | None = None) -> Prepared:
    """A seed's inputs: the job's shared inputs (read here unless given), its train-time drop (seeded
    by `seed`) and, for medmix_single_expert, the best expert per modality (on validation)."""
    sh = shared or read_shared(job, cohort, caches)
    method, task, co, y, split = sh.method, sh.task, sh.cohort, sh.y, sh.split
    exp = sh.exp.copy()
    drop = None
    if job.drop:  # robustness sweeps: modalities removed from training samples (medmix/masks.py)
        drop = TrainDrop(job.drop, job.modalities, co, seed, outcome=y)
        split = drop.apply(exp, split)
    dropped = list(exp.dropped)
    info: dict = {"train_drop": drop.summary} if drop else {}
    if method.single_expert:
        info["single_expert"] = _best_single_expert(exp, task, y, split)
    tea = sh.tea
    if _teacher_branch(method) and drop:
        # teacher statistics on the training rows this seed's drop leaves
        tea = load_role(caches, job, co, "teachers", _teacher_mods(job, exp), rows=np.isin(split, ("train", "val")))
        drop.apply(tea, split, relabel=False)
    if tea is not None:
        dropped += tea.dropped
    return Prepared(job, method, task, co, y, split, exp, tea, dropped, info)


def _fitted(method: MethodSpec) -> bool:
    """A closed-form fit (logreg), not gradient steps."""
    return bool(getattr(model_class(method.arch), "fitted", False))


def _teacher_branch(method: MethodSpec) -> bool:
    """The method trains a teacher branch (and so reads teacher embeddings of the train and val rows)."""
    return method.teacher and not _fitted(method)


def fit(p: Prepared, seed: int, train: TrainParams | None = None, C: float | None = None,
        device: str = "cpu", progress: bool = False) -> tuple[np.ndarray, dict, dict, dict]:
    """One fit of a prepared job: (probabilities on every row, model outputs, student state, info).
    `train`: the train settings (default the job's); `C`: a linear model's L2 strength (default:
    the best of 0.001-1 on validation)."""
    train = train or p.job.train
    if _fitted(p.method):
        p_all, state, more = _fit_logreg(p.exp, p.task, p.y, p.split, seed, C)
        logits, o_all = more.pop("logits"), {}
    else:
        cfg = fusion_config(p.method, train, p.task.kind)
        p_all, o_all, state, more = _fit_neural(p.job, p.method, cfg, train, p.task, p.exp, p.tea, p.y, p.split,
                                                seed, device, progress)
        logits = o_all["logit"].float().cpu().numpy()
    if train.calibrate == "temperature" and p.task.kind != "survival":
        va = p.split == "val"
        more["temperature"] = fit_temperature(p.task, logits[va], p.y[va])
        p_all = p.task.predictions(logits / more["temperature"])
    return p_all, o_all, state, more


def fit_temperature(task: Task, logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of `logits / T` on labelled
    (validation) rows: binary/multilabel BCE (one T for every label), multiclass CE. 1.0 when
    there is nothing to fit."""
    z = torch.from_numpy(np.asarray(logits, np.float64).reshape(len(logits), -1))
    yt = torch.from_numpy(np.asarray(y, np.float64).reshape(len(z), -1) if task.kind != "multiclass"
                          else np.asarray(y, np.float64))
    ok = ~torch.isnan(yt)
    if not ok.any():
        return 1.0
    s = torch.zeros((), dtype=torch.float64, requires_grad=True)   # T = exp(s)
    opt = torch.optim.LBFGS([s], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        zt = z / s.exp()
        if task.kind == "multiclass":
            loss = torch.nn.functional.cross_entropy(zt[ok], yt[ok].long())
        else:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(zt[ok], yt[ok])
        loss.backward()
        return loss
    opt.step(closure)
    return float(s.detach().exp().clamp(0.05, 20.0))


def apply_tuning(job: TrainJob, params: dict) -> tuple[TrainJob, float | None]:
    """A job with the tuned settings of medmix.tune (train fields) and the tuned `C` of a linear model."""
    names = {f.name for f in dataclasses.fields(TrainParams)}
    unknown = sorted(set(params) - names - {"C"})
    if unknown:
        raise MedmixError(f"tuned parameters {unknown} are not train settings (known: {sorted(names)}, C)")
    train = dataclasses.replace(job.train, **{k: v for k, v in params.items() if k in names})
    return dataclasses.replace(job, train=train), params.get("C")


def train_run(job: TrainJob | dict, seed: int, out: str | Path, cohort: str | Path | None = None,
              caches: Caches | None = None, results: str | Path = "results",
              device: str | None = None, progress: bool = True, tuned: dict | None = None,
              tuning_budget: dict | None = None) -> dict:
    """Train one (dataset, method, seed) on cached embeddings; write model.pt, metrics.json and
    predictions.parquet under `out`. The arguments are train_seeds' (one seed, its own folder)."""
    return _train(job, [(seed, Path(out))], cohort, caches, results, device, progress, tuned, tuning_budget)[0]


def train_seeds(job: TrainJob | dict, seeds: list[int], out: str | Path, cohort: str | Path | None = None,
                caches: Caches | None = None, results: str | Path = "results",
                device: str | None = None, progress: bool = True, tuned: dict | None = None,
                tuning_budget: dict | None = None) -> list[dict]:
    """Train every seed of one (dataset, method[, train-time drop]) in this process: the caches are
    read once, then each seed is fitted on its own (`torch.manual_seed(seed)`, its own generator),
    so a seed's run is the same whichever seeds share its job. Writes model.pt, metrics.json and
    predictions.parquet per seed in `out/seed{s}/` (the workflow's layout).

    `cohort` and `caches`: the files the train rule declares (default: the workflow's layout under
    `results`, for library use). `tuned`: the best parameters of the method's tuning on validation
    (medmix.tune), which replace the config's; `tuning_budget`: that search's budget, recorded."""
    return _train(job, [(s, Path(out) / f"seed{s}") for s in seeds], cohort, caches, results, device, progress,
                  tuned, tuning_budget)


def _train(job: TrainJob | dict, runs: list[tuple[int, Path]], cohort, caches, results, device, progress, tuned,
           tuning_budget) -> list[dict]:
    """train_seeds with each (seed, output folder) given."""
    t_start = time.perf_counter()
    job = job if isinstance(job, TrainJob) else TrainJob.from_dict(job)
    seeds = [s for s, _ in runs]
    if len(set(seeds)) != len(seeds) or not seeds:
        raise MedmixError(f"train {job.dataset}/{job.method}: seeds {list(seeds)} must be distinct and not empty")
    C = None
    if tuned:
        job, C = apply_tuning(job, tuned)
    cpath = Path(cohort) if cohort else Path(results) / job.dataset / "cohort.parquet"
    caches = caches or Caches.under(results, job.dataset)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    shared = read_shared(job, cpath, caches)
    read_s = time.perf_counter() - t_start
    out_metrics = []
    for seed, run_dir in runs:
        t_seed = time.perf_counter()
        p = prepare(job, seed, cpath, caches, shared)
        info = dict(p.info)
        if tuned:
            info["tuned"] = tuned
        if tuning_budget:
            info["tuning_budget"] = tuning_budget
        p_all, o_all, state, more = fit(p, seed, C=C, device=device, progress=progress)
        info.update(more)
        seconds = read_s / len(seeds) + time.perf_counter() - t_seed
        out_metrics.append(_write_run(p, seed, run_dir, p_all, o_all, state, info, device, seconds))
    return out_metrics


def _write_run(p: Prepared, seed: int, out: Path, p_all: np.ndarray, o_all: dict, state: dict, info: dict,
               device: str, seconds: float) -> dict:
    """One seed's files, each written atomically: predictions.parquet, model.pt, metrics.json (last:
    the rule's completion marker)."""
    job, method, task, cohort, y, split, exp = p.job, p.method, p.task, p.cohort, p.y, p.split, p.exp
    va, te = split == "val", split == "test"
    thr = thresholds(task.kind, y[va], p_all[va])  # decision thresholds chosen on validation
    metrics = {
        "dataset": job.dataset, "method": job.method, "seed": seed, "task": job.task,
        "task_type": task.kind, "labels": task.labels,
        "task_spec": task.to_spec(),
        "val": task_metrics(task.kind, y[va], p_all[va], thr=thr),
        "test": task_metrics(task.kind, y[te], p_all[te], n_boot=job.train.bootstrap, seed=seed, thr=thr),
        "modalities": list(exp.dims), "inputs": exp.slugs, "left_out": p.dropped, "device": device,
        **{k: v for k, v in info.items() if not k.endswith("history")},
        "seconds": round(seconds, 2), "medmix_version": __version__,
    }
    cols = {"sample_id": cohort["sample_id"], "split": cohort["split"],
            **task.prediction_columns(y, np.asarray(p_all, dtype=np.float64))}
    cols.update(weight_columns(o_all, exp.slugs))
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "predictions.parquet") as tmp:
        pl.DataFrame(cols).write_parquet(tmp)
    with atomic_path(out / "model.pt") as tmp:
        torch.save({"state_dict": state, "spec": job.to_dict(), "seed": seed, "dims": exp.dims, "method": method.to_dict(),
                    "task": task.to_spec(), "n_out": task.n_out, "thresholds": thr,
                    "experts": exp.slugs, "norm": exp.norm, "history": info.get("history", []),
                    "teacher_history": info.get("teacher_history", []),
                    "temperature": info.get("temperature", 1.0),
                    "medmix_version": __version__}, tmp)
    write_json(out / "metrics.json", metrics)
    return metrics


def _fit_neural(job: TrainJob, method: MethodSpec, cfg, tcfg: TrainParams, task: Task, exp: Inputs,
                tea: Inputs | None, y, split, seed, device, progress):
    """AdamW with early stopping on the validation metric; returns (probabilities, outputs, student state, info).

    With a teacher branch, `tcfg.teacher_schedule`: joint (one loss, the teacher's validation score
    recorded per epoch) or two_stage (the teacher branch fitted first to its own early stop, then
    frozen: its outputs on the train rows are computed once and the student distils from them)."""
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
    model = create_model(method, exp.dims, cfg, teacher_dims=tdims, n_out=task.n_out).to(device)
    if hasattr(model, "fit_inputs"):  # an imputer (medmix.model.imputation): fitted on the train split only
        model.fit_inputs(X, M, torch.from_numpy(np.flatnonzero(split == "train")).to(device), exp.norm)
    yt = torch.from_numpy(y.astype(np.float32)).to(device)
    tr_rows = (split == "train") & task.labelled(y)
    tr = torch.from_numpy(np.flatnonzero(tr_rows)).to(device)
    if tcfg.pos_weight and task.kind in ("binary", "multilabel"):
        # negatives/positives per label on the train split (1 where a label has no positive)
        yy = y[tr_rows].reshape(int(tr_rows.sum()), -1)
        pos, neg = np.nansum(yy, 0), np.nansum(1 - yy, 0)
        model.pos_weight = torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), dtype=torch.float32,
                                        device=device)
    va = np.flatnonzero(split == "val")
    amp = device.startswith("cuda")  # bf16 autocast on GPU; full precision on CPU (deterministic)
    fit = _Fit(task, y, yt, tr, tcfg, gen, amp, device, progress)
    has_teacher = getattr(model, "teacher", None) is not None
    info: dict = {}
    data: tuple = (X, M, TX, TM)
    watch = None
    if has_teacher and tcfg.teacher_schedule == "two_stage":
        stage = model.teacher_stage()
        t_va = va[_with_teacher(TM, va)]                # validation rows with a teacher embedding
        if len(t_va) == 0:
            raise MedmixError(f"train {job.dataset}/{job.method}: two_stage needs teacher embeddings on "
                              "validation rows for the teacher's early stop; there are none")
        t_hist, t_best = fit.run(stage, stage.parameters(), (TX, TM), t_va, f"{job.method}/seed{seed} teacher")
        info["teacher_best_epoch"], info["teacher_history"] = t_best, t_hist
        stage.eval()
        with torch.no_grad():
            pre = model.teach(TX, TM)            # every row at once (train rows are the ones used)
        model.teacher_frozen = True
        data = (X, M, None, None, {k: v.detach() for k, v in pre.items()})
        params = [p for n, p in model.named_parameters() if not n.startswith("teacher")]
    else:
        params = list(model.parameters())
        if has_teacher and TX is not None:
            t_va = va[_with_teacher(TM, va)]
            watch = (model.teacher_stage(), TX, TM, t_va) if len(t_va) else None
    history, best_epoch = fit.run(model, params, data[:2], va, f"{job.dataset}/{job.method}/seed{seed}",
                                  train_data=data, watch=watch)
    p_all, _, o_all = fit.predict(model, (X, M), np.arange(len(y)))
    student = {k: v.cpu() for k, v in model.state_dict().items() if not k.startswith(("teacher", "align"))}
    info.update({"best_epoch": best_epoch, "epochs": len(history), "history": history,
                 "n_params": sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("teacher", "align")))})
    return p_all, o_all, student, info


def _with_teacher(TM: dict | None, rows: np.ndarray) -> np.ndarray:
    """Which of `rows` have any teacher embedding."""
    if not TM:
        return np.zeros(len(rows), bool)
    return torch.stack([v.any(1) for v in TM.values()], 1).any(1).cpu().numpy()[rows]


@dataclass
class _Fit:
    """The epoch loop with early stopping on the validation metric, shared by the student and the
    teacher stage of the two-stage schedule."""
    task: Task
    y: np.ndarray
    yt: torch.Tensor
    tr: torch.Tensor
    tcfg: TrainParams
    gen: torch.Generator
    amp: bool
    device: str
    progress: bool

    def predict(self, model, data: tuple, idx: np.ndarray) -> tuple[np.ndarray, float, dict]:
        model.eval()
        ix = torch.from_numpy(idx).to(self.device)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            o = model(make_batch(*data, ix), train=False)
            loss, _ = model.loss(o, self.yt[ix])
        return self.task.predictions(o["logit"].float().cpu().numpy()), float(loss), o

    def score(self, model, data: tuple, va: np.ndarray) -> tuple[float, float]:
        p_va, l_va, _ = self.predict(model, data, va)
        return _val_score(self.task.kind, self.y[va], p_va, l_va), l_va

    def run(self, model, params, data: tuple, va: np.ndarray, desc: str, train_data: tuple | None = None,
            watch: tuple | None = None) -> tuple[list[dict], int]:
        """Train `model` (its `params`) to the best validation epoch (restored); returns (history, best epoch).
        `train_data`: the training batches' tensors (default `data`); `watch` = (teacher stage, TX, TM,
        rows): also record that model's validation score per epoch (the joint schedule's teacher)."""
        tcfg = self.tcfg
        opt = adamw(params, tcfg.lr, tcfg.weight_decay, self.device)
        best, best_state, best_epoch, bad = -np.inf, None, 0, 0
        history = []
        bar = tqdm(range(tcfg.max_epochs), desc=f"train {desc}", disable=not self.progress, mininterval=2)
        for epoch in bar:
            if hasattr(model, "teacher_weight"):
                model.teacher_weight = min(1.0, (epoch + 1) / tcfg.kd_warmup) if tcfg.kd_warmup else 1.0
            parts: dict = {}
            tot = train_epoch(model, opt, train_data or data, self.yt, self.tr, tcfg.batch_size, self.gen, self.amp, parts)
            score, l_va = self.score(model, data, va)
            n = max(len(self.tr), 1)
            row = {"epoch": epoch, "train_loss": tot / n, "val_loss": l_va, "val_score": score,
                   **{f"loss_{k}": v / n for k, v in parts.items()}}
            if watch is not None:
                row["teacher_val_score"] = self.score(watch[0], watch[1:3], watch[3])[0]
            history.append(row)
            bar.set_postfix(val=f"{score:.3f}")
            if score > best + 1e-6:
                best, best_state, best_epoch, bad = score, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                bad += 1
                if bad >= tcfg.patience:
                    break
        model.load_state_dict(best_state)
        return history, best_epoch
