"""A trained run (`runs/{method}[/drop-…]/seed{s}/`): how every stage after train reads one.

`Run.load(dir)` reads model.pt (weights-only: a file with pickled code is refused), and gives the
run's method, task, fusion config, experts and train-split statistics; `Run.inputs` reads a
cohort's caches for the run's experts and standardises them with the *stored* statistics (zero
where absent); `Run.predict` runs the student (never a teacher). Robustness, cross-cohort,
efficiency and deploy bundles all go through here, so a run is read one way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl
import torch

from medmix.config import TrainJob, encoder_identity
from medmix.embed import apply_fit, stored_fit
from medmix.encoders import create_encoder
from medmix.encoders.cache import read_attrs, read_cache
from medmix.inputs import Caches, expected_attrs, standardise
from medmix.io import MedmixError
from medmix.methods import MethodSpec
from medmix.model import FusionConfig, create_model, fusion_config
from medmix.tasks import Task


def load_checkpoint(path: str | Path) -> dict:
    """A run's model.pt, loaded with `weights_only=True`: tensors and plain data only, so a file with
    pickled code in it is refused (MedmixError naming the file) and its code never runs."""
    path = Path(path)
    if not path.exists():
        raise MedmixError(f"{path}: model checkpoint not found (run the train step)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError: all mean "not a plain checkpoint"
        raise MedmixError(f"{path}: refused to load: not a plain weights checkpoint (weights_only=True: "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}). "
                          "Only load model.pt files that medmix wrote; retrain the run") from None


def student_model(method: MethodSpec, dims: dict, fcfg: FusionConfig, state: dict, task: Task) -> torch.nn.Module:
    """The trained student network in eval mode; the teacher branch is never built, and loading is
    strict, so a student checkpoint with any teacher weight is refused."""
    model = create_model(dataclasses.replace(method, teacher=False), dims,
                         dataclasses.replace(fcfg, task=task.kind), n_out=task.n_out)
    model.load_state_dict(state)
    return model.eval()


def predict_student(method: MethodSpec, dims: dict, fcfg: FusionConfig, state: dict, X: dict, M: dict,
                    task: Task, temperature: float = 1.0) -> tuple[np.ndarray, dict]:
    """Predictions (probabilities; risk for survival) and the model's outputs (α/β where it has
    them) of a trained student on standardised inputs X, M; `temperature`: the post-hoc
    calibration fitted on validation (`train.calibrate`), dividing the logits."""
    return predict_with(student_model(method, dims, fcfg, state, task), X, M, task, temperature)


def predict_with(model: torch.nn.Module, X: dict, M: dict, task: Task, temperature: float = 1.0) -> tuple[np.ndarray, dict]:
    """predict_student with the student network already built (student_model)."""
    with torch.no_grad():
        o = model({"x": X, "mask": M}, train=False)
    logits = o["logit"].numpy()
    return task.predictions(logits if temperature == 1.0 else logits / temperature), o


@dataclass
class Run:
    path: Path
    ckpt: dict

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        path = Path(path)
        return cls(path, load_checkpoint(path / "model.pt"))

    @cached_property
    def job(self) -> TrainJob:
        """The train job the run was made from (medmix.config.train_job)."""
        return TrainJob.from_dict(self.ckpt["spec"])

    @property
    def dataset(self) -> str:
        return self.job.dataset

    @property
    def name(self) -> str:
        """The method name (the {method} wildcard)."""
        return self.job.method

    @property
    def seed(self) -> int:
        return int(self.ckpt["seed"])

    @cached_property
    def method(self) -> MethodSpec:
        return MethodSpec.from_dict(self.ckpt["method"])

    @cached_property
    def task(self) -> Task:
        t = self.ckpt.get("task")
        if not t:  # runs from before the task field: the binary `spec.task`
            return Task(self.job.task, "binary", (f"y_{self.job.task}",))
        return Task.from_spec(t["name"], t)

    @cached_property
    def fusion(self) -> FusionConfig:
        return fusion_config(self.method, self.job.train, self.task.kind)

    @property
    def dims(self) -> dict[str, list[int]]:
        return self.ckpt["dims"]

    @property
    def experts(self) -> dict[str, list[str]]:
        """Modality → the encoder slugs the deployed student reads (teacher_deployed: its teachers)."""
        return self.ckpt["experts"]

    @property
    def thresholds(self) -> list | None:
        return self.ckpt.get("thresholds")

    def caches(self) -> list[tuple[str, str]]:
        """The (modality, encoder) caches the deployed run reads."""
        return [(m, s) for m, slugs in self.experts.items() for s in slugs]

    def inputs(self, cohort: pl.DataFrame, caches: Caches, source: Caches | None = None) -> tuple[dict, dict]:
        """Standardised inputs X (m -> [(N, d_mk)]) and presence M (m -> (N, K_m)) of `cohort`.

        `caches` hold the cohort's embeddings. `source`: the caches of the run's own dataset when
        `cohort` is another one (cross-cohort): then a frozen encoder's cache must have the same
        weights and preprocessing as the source's, and a fitted encoder is applied with its source
        fit (never refitted); a modality the cohort lacks is absent everywhere."""
        ids = cohort["sample_id"].to_list()
        X, M = {}, {}
        for m, slugs in self.experts.items():
            xs, ms = [], []
            for k, slug in enumerate(slugs):
                dim = self.dims[m][k]
                if source is None:
                    emb, present = read_cache(caches[m, slug], expect=expected_attrs(self.job, slug, cohort, m),
                                              ids=ids)
                elif m not in cohort.columns:
                    emb, present = np.zeros((len(ids), dim), np.float32), np.zeros(len(ids), bool)
                else:
                    emb, present = self._transfer(cohort, caches, source, m, slug, dim)
                if emb.shape[1] != dim:
                    raise MedmixError(f"{m}/{slug}: embedding dim {emb.shape[1]} differs from the run's {dim} "
                                      f"({self.path})")
                mu, sd = (t.numpy() for t in self.ckpt["norm"][m][k])
                xs.append(torch.from_numpy(standardise(emb, present, mu, sd)))
                ms.append(torch.from_numpy(present))
            X[m], M[m] = xs, torch.stack(ms, 1)
        return X, M

    def _transfer(self, cohort, caches, source, m, slug, dim):
        src = source[m, slug]
        a = read_attrs(src)
        enc_spec, state, fit = stored_fit(src)
        enc = create_encoder(encoder_identity(enc_spec))
        if enc.fitted:
            return apply_fit(enc, cohort[m].to_list(), state, fit)
        emb, present = read_cache(caches[m, slug], expect={"weights_hash": a["weights_hash"],
                                                           "preprocessing_hash": a["preprocessing_hash"]},
                                  ids=cohort["sample_id"].to_list())
        if emb.shape[1] == 0:  # the modality is absent from every sample of the cohort
            emb = np.zeros((len(present), dim), np.float32)
        return emb, present

    def model(self) -> torch.nn.Module:
        return student_model(self.method, self.dims, self.fusion, self.ckpt["state_dict"], self.task)

    @cached_property
    def _student(self) -> torch.nn.Module:
        return self.model()

    def predict(self, X: dict, M: dict) -> tuple[np.ndarray, dict]:
        """Predictions on standardised inputs; the network is built once per Run (the robustness
        sweep predicts ~100 masks per run)."""
        return predict_with(self._student, X, M, self.task, float(self.ckpt.get("temperature", 1.0)))
