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
from medmix.model.ensemble import NotStackable, keep_seeds, member, seed_chunk, seed_state, stack_seeds
from medmix.model.losses import cox_loss
from medmix.model.registry import model_class
from medmix.tasks import Task

log = logging.getLogger("medmix.train")


def make_batch(X, M, idx, TX=None, TM=None, pre=None) -> dict:
    """A batch of rows `idx` (kept as `row`): expert inputs, teacher inputs (TX, TM) and per-row
    tensors `pre` (a frozen teacher's outputs), all index gathers. `finite`: the inputs are finite
    everywhere (medmix.inputs: absent rows are 0, present ones checked), so a model need not mask
    its absent inputs before projecting them (medmix.model.medmix.Branch)."""
    b = {"x": {m: [x[idx] for x in xs] for m, xs in X.items()}, "mask": {m: v[idx] for m, v in M.items()},
         "row": idx, "finite": True}
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


class SeedTables:
    """The tensors (X, M, TX, TM) of E seeds, to gather one seed-major batch from (medmix.model.ensemble):
    a tensor every seed shares is indexed by each seed's rows as they are; tensors that differ (a
    seed's train-time drop) are concatenated once, seed e's rows offset by e·N."""

    def __init__(self, datas: list[tuple], n_rows: int):
        self.n = n_rows

        def merge(vals):
            v0 = vals[0]
            if v0 is None:
                return None
            if isinstance(v0, dict):
                return {k: merge([v[k] for v in vals]) for k in v0}
            if isinstance(v0, list):
                return [merge([v[i] for v in vals]) for i in range(len(v0))]
            return (v0, False) if all(v is v0 for v in vals) else (torch.cat(vals), True)
        self.data = [merge([d[j] for d in datas]) for j in range(4)]

    def batch(self, idx: list[torch.Tensor], seeds: list[int]) -> dict:
        """The batch of rows idx[i] of seed seeds[i] (positions in the tables), seed after seed."""
        flat = torch.cat(idx)
        off = torch.cat([i + s * self.n for i, s in zip(idx, seeds)])

        def take(v):
            if v is None:
                return None
            if isinstance(v, dict):
                return {k: take(x) for k, x in v.items()}
            if isinstance(v, list):
                return [take(x) for x in v]
            t, per_seed = v
            return t[off] if per_seed else t[flat]
        X, M, TX, TM = (take(v) for v in self.data)
        b = {"x": X, "mask": M, "row": flat, "finite": True}   # as make_batch
        if TX:
            b["tx"], b["tmask"] = TX, TM
        return b


def seed_losses(model, o: dict, ys: list[torch.Tensor], pos_weights: list) -> tuple[list[torch.Tensor], list[dict]]:
    """Each seed's loss on its rows of a seed ensemble's outputs, with its own parameters (member(e))."""
    E = len(ys)
    losses, parts = [], []
    for e in range(E):
        model.pos_weight = pos_weights[e]
        with member(e):
            loss, part = model.loss(seed_chunk(o, e, E), ys[e])
        losses.append(loss)
        parts.append(part)
    return losses, parts


def train_epoch_seeds(ens, opt, tables: SeedTables, seeds: list[int], yt: torch.Tensor, trs: list[torch.Tensor],
                      bs: int, gens: list[torch.Generator], pos_weights: list, amp: bool = False,
                      parts: list[dict] | None = None) -> list[float]:
    """train_epoch for a seed ensemble (medmix.model.ensemble): each seed shuffles its own training
    rows `trs[i]` with its own generator and draws its masks from it; one step updates every seed.
    Returns each seed's summed loss; `parts[i]` accumulates seed i's loss terms."""
    ens.train()
    perms = [tr[torch.randperm(len(tr), generator=g, device=tr.device)] for tr, g in zip(trs, gens)]
    tots = [0.0] * len(trs)
    for s in range(0, len(perms[0]), bs):
        idx = [p[s:s + bs] for p in perms]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            o = ens(tables.batch(idx, seeds), train=True, gen=gens)
            losses, part = seed_losses(ens, o, [yt[i] for i in idx], pos_weights)
        opt.zero_grad(set_to_none=True)
        sum(losses).backward()
        opt.step()
        for e, (loss, pe) in enumerate(zip(losses, part)):
            n = len(idx[e])
            tots[e] += loss.item() * n
            if parts is not None:
                for k, v in pe.items():
                    parts[e][k] = parts[e].get(k, 0.0) + v * n
    return tots


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
    return fit_seeds([p], [seed], train, C, device, progress)[0]


def fit_seeds(preps: list[Prepared], seeds: list[int], train: TrainParams | None = None, C: float | None = None,
              device: str = "cpu", progress: bool = False) -> list[tuple[np.ndarray, dict, dict, dict]]:
    """fit for each (prepared inputs, seed) of one job: networks that allow it train as one seed
    ensemble (medmix.model.ensemble; seeds with as many training rows share one), the others one
    seed after another. A seed's result is the same whichever seeds are fitted with it."""
    p0 = preps[0]
    train = train or p0.job.train
    out: dict[int, tuple] = {}
    if not _fitted(p0.method):
        cfg = fusion_config(p0.method, train, p0.task.kind)
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(preps):   # seeds train in lockstep: the same number of batches per epoch
            groups.setdefault(int(((p.split == "train") & p.task.labelled(p.y)).sum()), []).append(i)
        for g in groups.values():
            try:
                res = _fit_together(p0.job, p0.method, cfg, train, p0.task, [preps[i] for i in g],
                                    [seeds[i] for i in g], device, progress)
            except NotStackable:
                break
            out.update(zip(g, res))
    for i, (p, seed) in enumerate(zip(preps, seeds)):
        if i in out:
            continue
        if _fitted(p.method):
            p_all, state, more = _fit_logreg(p.exp, p.task, p.y, p.split, seed, C)
            out[i] = (p_all, {"logits": more.pop("logits")}, state, more)
        else:
            cfg = fusion_config(p.method, train, p.task.kind)
            out[i] = _fit_neural(p.job, p.method, cfg, train, p.task, p.exp, p.tea, p.y, p.split, seed, device, progress)
    results = []
    for i, p in enumerate(preps):
        p_all, o_all, state, more = out[i]
        logits = o_all.pop("logits") if "logits" in o_all else o_all["logit"].float().cpu().numpy()
        if train.calibrate == "temperature" and p.task.kind != "survival":
            va = p.split == "val"
            more["temperature"] = fit_temperature(p.task, logits[va], p.y[va])
            p_all = p.task.predictions(logits / more["temperature"])
        results.append((p_all, o_all, state, more))
    return results


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
    read once, then the seeds are fitted together as one seed ensemble where the network allows
    (fit_seeds), each with its own initialisation (`torch.manual_seed(seed)`), generators and early
    stop, so a seed's run is the same whichever seeds share its job. Writes model.pt, metrics.json and
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
    preps, infos = [], []
    for seed, _ in runs:
        p = prepare(job, seed, cpath, caches, shared)
        info = dict(p.info)
        if tuned is not None:   # {}: the search kept the defaults (trial 0)
            info["tuned"] = tuned
        if tuning_budget:
            info["tuning_budget"] = tuning_budget
        preps.append(p)
        infos.append(info)
    fits = fit_seeds(preps, seeds, C=C, device=device, progress=progress)
    seconds = (time.perf_counter() - t_start) / len(seeds)   # the job's time, shared alike by its seeds
    out_metrics = []
    for (seed, run_dir), p, info, (p_all, o_all, state, more) in zip(runs, preps, infos, fits):
        info.update(more)
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
    model.pos_weight = _pos_weight(tcfg, task, y, tr_rows, device)
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


def _pos_weight(tcfg: TrainParams, task: Task, y: np.ndarray, tr_rows: np.ndarray, device: str):
    """`pos_weight`: negatives/positives per label on the training rows (1 where a label has no
    positive); None unless the train block asks for it (binary, multilabel)."""
    if not (tcfg.pos_weight and task.kind in ("binary", "multilabel")):
        return None
    yy = y[tr_rows].reshape(int(tr_rows.sum()), -1)
    pos, neg = np.nansum(yy, 0), np.nansum(1 - yy, 0)
    return torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), dtype=torch.float32, device=device)


def _fit_together(job: TrainJob, method: MethodSpec, cfg, tcfg: TrainParams, task: Task, preps: list[Prepared],
                  seeds: list[int], device: str, progress: bool) -> list[tuple]:
    """_fit_neural for several seeds at once, as one seed ensemble (medmix.model.ensemble): each seed
    has its own initialisation (`torch.manual_seed(seed)`), generators, batch order, masks, dropout
    and early stop on validation; a seed that stops leaves the ensemble. The same per-seed results
    as fitting the seeds in any other grouping (tested). Raises NotStackable for a network that
    cannot be stacked, or for the two-stage schedule (fitted seed by seed)."""
    E, p0 = len(seeds), preps[0]
    y = p0.y
    tdims = p0.tea.dims if p0.tea is not None and p0.tea.X else None
    if method.teacher and tdims and tcfg.teacher_schedule == "two_stage":
        raise NotStackable("the two-stage schedule")
    models, gens, dgens = [], [], []
    for s in seeds:
        torch.manual_seed(s)
        gens.append(torch.Generator(device=device).manual_seed(s))
        models.append(create_model(method, p0.exp.dims, cfg, teacher_dims=tdims, n_out=task.n_out).to(device))
        # the seed's dropout stream, drawn from its global generator after its initialisation
        dgens.append(torch.Generator(device=device).manual_seed(int(torch.randint(2 ** 62, (1,)))))
    ens = stack_seeds(models)
    ens._seed_gens[:] = dgens
    on_device: dict = {}   # one copy per tensor, however many seeds share it

    def dev(d):
        if d is None:
            return None
        move = lambda t: on_device.setdefault(id(t), (t, t.to(device)))[1]  # noqa: E731
        return {m: [move(x) for x in v] if isinstance(v, list) else move(v) for m, v in d.items()}
    datas = [(dev(p.exp.X), dev(p.exp.M), dev(p.tea.X) if tdims else None, dev(p.tea.M) if tdims else None)
             for p in preps]
    N = len(y)
    tables = SeedTables(datas, N)
    yt = torch.from_numpy(y.astype(np.float32)).to(device)
    tr_rows = [(p.split == "train") & task.labelled(y) for p in preps]
    trs = [torch.from_numpy(np.flatnonzero(r)).to(device) for r in tr_rows]
    pws = [_pos_weight(tcfg, task, y, r, device) for r in tr_rows]
    va = np.flatnonzero(p0.split == "val")
    amp = device.startswith("cuda")
    # the joint schedule's teacher, scored per epoch on the validation rows each seed has a teacher for
    t_vas = [va[_with_teacher(d[3], va)] for d in datas] if tdims else None
    t_tables = SeedTables([(d[2], d[3], None, None) for d in datas], N) if tdims else None
    opt = adamw(ens.parameters(), tcfg.lr, tcfg.weight_decay, device)
    active = list(range(E))                       # the seeds (positions) still in the ensemble
    hist: list[list[dict]] = [[] for _ in seeds]
    best = [_EarlyStop(tcfg.patience) for _ in seeds]

    def scores(model, tabs: SeedTables, rows: list[np.ndarray]) -> list[tuple[float, float]]:
        """(validation score, loss) of each active seed on its `rows`: one forward when every seed
        scores the same rows, else one per seed (member(i))."""
        model.eval()
        n = len(active)
        same = all(np.array_equal(r, rows[0]) for r in rows)
        groups = [list(range(n))] if same else [[i] for i in range(n)]
        out = []
        for g in groups:
            r = torch.from_numpy(rows[g[0]]).to(device)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                if same:
                    o = model(tabs.batch([r] * n, active), train=False)
                    losses, _ = seed_losses(model, o, [yt[r]] * n, [pws[a] for a in active])
                else:
                    with member(g[0]):
                        o = model(tabs.batch([r], [active[g[0]]]), train=False)
                    losses, _ = seed_losses(model, o, [yt[r]], [pws[active[g[0]]]])
            for j, loss in enumerate(losses):
                p = task.predictions(seed_chunk(o["logit"], j, len(losses)).float().cpu().numpy())
                out.append((_val_score(task.kind, y[rows[g[0]]], p, float(loss)), float(loss)))
        return out

    desc = f"train {job.dataset}/{job.method}/seed{','.join(map(str, seeds))}"
    bar = tqdm(range(tcfg.max_epochs), desc=desc, disable=not progress, mininterval=2)
    for epoch in bar:
        if hasattr(ens, "teacher_weight"):
            ens.teacher_weight = _ramp(tcfg, epoch)
        parts: list[dict] = [{} for _ in active]
        tots = train_epoch_seeds(ens, opt, tables, active, yt, [trs[a] for a in active], tcfg.batch_size,
                                 [gens[a] for a in active], [pws[a] for a in active], amp, parts)
        val = scores(ens, tables, [va] * len(active))
        t_val = None
        if tdims and all(len(t_vas[a]) for a in active):
            t_val = scores(ens.teacher_stage(), t_tables, [t_vas[a] for a in active])
        stop = []
        for i, a in enumerate(active):
            score, l_va = val[i]
            row = _epoch_row(epoch, tots[i], len(trs[a]), l_va, score, parts[i])
            if t_val:
                row["teacher_val_score"] = t_val[i][0]
            hist[a].append(row)
            if best[a].update(score, epoch, lambda: seed_state(ens, i)):
                stop.append(i)
        bar.set_postfix(val=" ".join(f"{v[0]:.3f}" for v in val))
        if stop:
            keep = [i for i in range(len(active)) if i not in stop]
            active = [active[i] for i in keep]
            if not active:
                break
            keep_seeds(ens, keep, opt)
    bar.close()
    out = []
    for a, (p, s) in enumerate(zip(preps, seeds)):   # each seed's best state in a network of its own
        model = create_model(method, p.exp.dims, cfg, teacher_dims=tdims, n_out=task.n_out).to(device)
        model.load_state_dict(best[a].state)
        model.pos_weight = pws[a]
        fit = _Fit(task, y, yt, trs[a], tcfg, gens[a], amp, device, False)
        p_all, _, o_all = fit.predict(model, datas[a][:2], np.arange(N))
        student = {k: v.cpu() for k, v in best[a].state.items() if not k.startswith(("teacher", "align"))}
        info = {"best_epoch": best[a].epoch, "epochs": len(hist[a]), "history": hist[a],
                "n_params": sum(q.numel() for n, q in model.named_parameters() if not n.startswith(("teacher", "align")))}
        out.append((p_all, o_all, student, info))
    return out


def _with_teacher(TM: dict | None, rows: np.ndarray) -> np.ndarray:
    """Which of `rows` have any teacher embedding."""
    if not TM:
        return np.zeros(len(rows), bool)
    return torch.stack([v.any(1) for v in TM.values()], 1).any(1).cpu().numpy()[rows]


def _ramp(tcfg: TrainParams, epoch: int) -> float:
    """The teacher terms' weight in an epoch: the `kd_warmup` ramp from 0 to 1 (1 without one)."""
    return min(1.0, (epoch + 1) / tcfg.kd_warmup) if tcfg.kd_warmup else 1.0


def _epoch_row(epoch: int, tot: float, n_train: int, l_va: float, score: float, parts: dict) -> dict:
    """One epoch of a run's history: mean train loss and loss terms, validation loss and score."""
    n = max(n_train, 1)
    return {"epoch": epoch, "train_loss": tot / n, "val_loss": l_va, "val_score": score,
            **{f"loss_{k}": v / n for k, v in parts.items()}}


@dataclass
class _EarlyStop:
    """Early stopping on the validation score: the best state so far and the epochs without a gain."""
    patience: int
    best: float = -np.inf
    state: dict | None = None
    epoch: int = 0
    bad: int = 0

    def update(self, score: float, epoch: int, state) -> bool:
        """Record an epoch's score (`state()` is called on a gain); True when training should stop."""
        if score > self.best + 1e-6:
            self.best, self.state, self.epoch, self.bad = score, state(), epoch, 0
            return False
        self.bad += 1
        return self.bad >= self.patience


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
        stop = _EarlyStop(tcfg.patience)
        history = []
        bar = tqdm(range(tcfg.max_epochs), desc=f"train {desc}", disable=not self.progress, mininterval=2)
        for epoch in bar:
            if hasattr(model, "teacher_weight"):
                model.teacher_weight = _ramp(tcfg, epoch)
            parts: dict = {}
            tot = train_epoch(model, opt, train_data or data, self.yt, self.tr, tcfg.batch_size, self.gen, self.amp, parts)
            score, l_va = self.score(model, data, va)
            row = _epoch_row(epoch, tot, len(self.tr), l_va, score, parts)
            if watch is not None:
                row["teacher_val_score"] = self.score(watch[0], watch[1:3], watch[3])[0]
            history.append(row)
            bar.set_postfix(val=f"{score:.3f}")
            if stop.update(score, epoch, lambda: copy.deepcopy(model.state_dict())):
                break
        model.load_state_dict(stop.state)
        return history, stop.epoch
