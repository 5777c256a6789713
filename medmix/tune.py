"""The tune stage: every method gets the same search budget on the validation split.

One process per (dataset, method): the job's inputs are read once (medmix.train.prepare), then a
seeded search runs `trials` fits, each scored by the task's primary metric on the validation
split (mean over `seeds`, trained together as one seed ensemble where the network allows). Trial 0
is the shared defaults (the method's settings without tuning), so a search replaces them only by
something better on validation; the other trials are Optuna TPE's (it samples its first 10 at
random: a budget of 10 or fewer is a seeded random search), asked and told one at a time. Ties
keep the earlier trial. Test labels are never read: a fit uses the train rows and early-stops on
validation rows, and the objective reads validation rows only. The search space of
a method is the union of the config's `tuning.spaces` groups that apply to it, less the fusion
settings its architecture does not read (a model class's `reads`, e.g. the imputers have no `d`):

| group     | applies to                                    | typical parameters                      |
| --------- | --------------------------------------------- | --------------------------------------- |
| `neural`  | every network (not the closed-form logreg)    | hidden, dropout, lr, weight_decay       |
| `medmix`  | architecture medmix, and the imputers         | d, modality_dropout, expert_dropout     |
| `teacher` | methods with a training-only teacher branch   | lambda_align, lambda_kd, tau, schedule  |
| `linear`  | closed-form linear models (logreg_concat)     | C                                       |

Output `results/{dataset}/tuning/{method}.json`: the budget, the space, every trial and the best
parameters, which that method's train jobs read (`medmix train --tuning FILE`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from medmix import __version__
from medmix.config import TrainJob
from medmix.inputs import Caches
from medmix.io import MedmixError, write_json
from medmix.methods import MethodSpec, method_spec
from medmix.metrics import PRIMARY, primary_score
from medmix.model import TRAINER_KEYS
from medmix.model.registry import model_class
from medmix.train import _fitted, apply_tuning, fit_seeds, prepare

GROUPS = ("neural", "medmix", "teacher", "linear")


def method_space(method: MethodSpec, spaces: dict) -> dict:
    """The search space of a method: the `spaces` groups that apply to it, merged in GROUPS order,
    less the settings the method fixes (an ablation variant's `train`)."""
    linear = _fitted(method)
    reads = getattr(model_class(method.arch), "reads", None)  # the fusion settings it reads (None: all)
    applies = {"neural": not linear,
               "medmix": not linear and (method.arch == "medmix" or "modality_dropout" in (reads or ())),
               "teacher": method.teacher and not linear, "linear": linear}
    unknown = sorted(set(spaces) - set(GROUPS))
    if unknown:
        raise MedmixError(f"tuning.spaces: unknown group(s) {unknown} (known: {', '.join(GROUPS)})")
    out: dict = {}
    for g in GROUPS:
        if applies[g]:
            out.update(spaces.get(g) or {})
    fixed = dict(method.train)
    return {k: v for k, v in out.items() if k not in fixed and (reads is None or k in reads or k in TRAINER_KEYS)}


def _distribution(spec: dict):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    if "choices" in spec:
        return CategoricalDistribution(list(spec["choices"]))
    if spec.get("int"):
        return IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
    return FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))


def tune(job: TrainJob | dict, cohort: str | Path, caches: Caches, tuning: dict, out: str | Path,
         device: str | None = None, progress: bool = True) -> dict:
    """Search the method's space on validation with `tuning` = {trials, seeds, sampler_seed, spaces};
    write and return the tuning record. `device`: as the train jobs run (default cuda if available),
    so the search sees the numbers the final runs will."""
    import optuna
    import torch
    from tqdm.auto import tqdm
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    job = job if isinstance(job, TrainJob) else TrainJob.from_dict(job)
    method = method_spec(job.method)
    space = method_space(method, tuning["spaces"])
    seeds = list(tuning["seeds"])
    p0 = prepare(job, seeds[0], Path(cohort), caches)  # no train-time drop here: the inputs are the same for every seed
    p0.y = p0.y.copy()
    p0.y[p0.split == "test"] = np.nan   # the search cannot read a test label, by construction
    va = p0.split == "val"
    kind = p0.task.kind
    trials: list[dict] = []

    def evaluate(params: dict, source: str) -> float:
        """Score `params` on the validation seeds, record the trial; Optuna's value (an undefined one last)."""
        tjob, C = apply_tuning(job, params)
        t0 = time.perf_counter()
        scores = []
        for p_all, _, _, _ in fit_seeds([p0] * len(seeds), seeds, train=tjob.train, C=C, device=device):
            v = primary_score(kind, p0.y[va], p_all[va])
            scores.append(None if np.isnan(v) else float(v))
        ok = [v for v in scores if v is not None]
        value = float(np.mean(ok)) if ok else None   # None: the metric is undefined on validation
        trials.append({"number": len(trials), "source": source, "params": params, "value": value, "per_seed": scores,
                       "seconds": round(time.perf_counter() - t0, 2)})
        bar.update(1)
        return value if value is not None else -1e9

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=int(tuning["sampler_seed"])))
    n = int(tuning["trials"]) if space else 0
    bar = tqdm(total=n, desc=f"tune {job.dataset}/{job.method}", disable=not progress, mininterval=2)
    if n:
        # trial 0 is the shared defaults (the job's own settings): the search can only replace them by
        # something better on validation, never do worse than not tuning on the seeds it is scored on
        defaults = {k: getattr(job.train, k) for k in space if hasattr(job.train, k)}  # logreg: C=None, its own pick
        value = evaluate(defaults, "defaults")
        dists = {k: _distribution(v) for k, v in space.items()}
        try:    # told to TPE when the defaults lie inside the space (lambda_kd = 0, off, lies outside a log range)
            study.add_trial(optuna.trial.create_trial(params=defaults, distributions={k: dists[k] for k in defaults},
                                                      value=value))
        except ValueError:
            pass
        for _ in range(n - 1):   # Optuna's ask-and-tell: one TPE sample per trial
            trial = study.ask(dists)
            study.tell(trial, evaluate(trial.params, "tpe"))
    bar.close()
    defined = [t for t in trials if t["value"] is not None]
    best = max(defined, key=lambda t: t["value"]) if defined else \
        {"params": trials[0]["params"] if trials else {}, "value": None, "number": trials[0]["number"] if trials else None}
    res = {"dataset": job.dataset, "method": job.method,
           "objective": f"validation {PRIMARY[kind]} (mean over seeds {seeds}); test rows are never read",
           "budget": {"trials": n, "seeds": seeds, "sampler": "optuna TPE", "first": "the shared defaults",
                      "sampler_seed": int(tuning["sampler_seed"])},
           "space": space, "best": {"params": best["params"], "value": best["value"], "trial": best["number"]},
           "trials": trials, "medmix_version": __version__}
    write_json(out, res)
    return res
