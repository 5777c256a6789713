"""Dataset loaders as a registry: `register_loader` / `list_loaders` / `build`.

A loader turns a raw release (`root`) and its config entry (medmix.config.prepare_job) into
(cohort with splits, report). It declares the tasks its cohorts carry (the first is the dataset's
default `task`) and the sources that may be absent by default. To add one: a function registered
here, plus its kind in the schema's `dataset.kind` enum and a per-kind `allOf` entry naming the
keys it reads (docs/design.md "Adding a dataset loader"); tests check the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import polars as pl

from medmix.data import cohort as cohort_mod
from medmix.io import MedmixError

Build = Callable[[dict, Path, list[str], Path], tuple[pl.DataFrame, dict]]


@dataclass(frozen=True)
class Loader:
    kind: str
    build: Build            # (spec, root, optional tables, work folder) -> (cohort with splits, report)
    tasks: tuple[str, ...]  # tasks its cohorts declare, default first (manifest: the config declares them)
    optional: tuple[str, ...]  # sources that may be absent unless the config says otherwise


_LOADERS: dict[str, Loader] = {}


def register_loader(kind: str, tasks: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> Callable[[Build], Build]:
    def deco(fn: Build) -> Build:
        if kind in _LOADERS:
            raise ValueError(f"dataset loader '{kind}' is registered already ({_LOADERS[kind].build.__qualname__})")
        _LOADERS[kind] = Loader(kind, fn, tuple(tasks), tuple(optional))
        return fn
    return deco


def list_loaders() -> list[str]:
    return sorted(_LOADERS)


def get_loader(kind: str) -> Loader:
    try:
        return _LOADERS[kind]
    except KeyError:
        raise MedmixError(f"unknown dataset kind '{kind}' (known: {', '.join(list_loaders())})") from None


def build(kind: str, spec: dict, root: str | Path, optional: list[str], work: str | Path) -> tuple[pl.DataFrame, dict]:
    """Build the cohort of one dataset. `spec` is the dataset's config entry (prepare_job);
    `work` is a folder for intermediate files (the ccRCC manifest)."""
    return get_loader(kind).build(spec, Path(root), optional, Path(work))


def _patient_split(cohort: pl.DataFrame, spec: dict) -> pl.DataFrame:
    sp = spec["split"]
    return cohort_mod.assign_splits(cohort, sp["train"], sp["val"], sp["seed"])


@register_loader("mimic4", tasks=("ihm", "los7"), optional=("radiology", "cxr_metadata"))
def _mimic4(spec, root, optional, work):
    from medmix.data.mimic4 import build_cohort
    cohort, report = build_cohort(root, note_root=spec["note_root"] or None, cxr_root=spec["cxr_root"] or None,
                                  prediction_hours=spec["prediction_hours"], min_age=spec["min_age"],
                                  lab_lookback_hours=spec["lab_lookback_hours"], optional_tables=optional,
                                  carry_forward=spec["carry_forward"])
    return _patient_split(cohort, spec), report


@register_loader("mimic3", tasks=("ihm", "los7"), optional=("noteevents",))
def _mimic3(spec, root, optional, work):
    from medmix.data.mimic3 import build_cohort
    cohort, report = build_cohort(root, prediction_hours=spec["prediction_hours"], min_age=spec["min_age"],
                                  lab_lookback_hours=spec["lab_lookback_hours"],
                                  itemid_map=spec["itemid_map"] or None, optional_tables=optional)
    return _patient_split(cohort, spec), report


@register_loader("openi", tasks=("normal", "problems"), optional=("images",))
def _openi(spec, root, optional, work):
    from medmix.data.openi import build_cohort
    return build_cohort(root, images=spec["images"] or None, split_file=spec["split_file"] or None,
                        top_k=spec["top_k"], split=spec["split"], optional_tables=optional)


@register_loader("manifest")
def _manifest(spec, root, optional, work):
    from medmix.data.manifest import build_cohort
    return build_cohort(spec["manifest"] or root / "manifest.csv", root=root, tasks=spec["tasks"],
                        inputs=spec["inputs"], split=spec["split"])


@register_loader("ccrcc", tasks=("os12", "os"), optional=("genomics", "ct", "mri", "wsi"))
def _ccrcc(spec, root, optional, work):
    from medmix.data.ccrcc import INPUTS, TASKS, write_manifest
    from medmix.data.manifest import build_cohort
    man, adapter = write_manifest(root, work / "manifest.csv", horizon_months=spec["horizon_months"],
                                  optional_tables=optional)
    cohort, report = build_cohort(man, root=root, tasks=TASKS, inputs=INPUTS, split=spec["split"])
    report["adapter"] = adapter
    report["warnings"] = adapter.pop("warnings", []) + report.get("warnings", [])
    return cohort, report
