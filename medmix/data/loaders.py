"""Dispatch `medmix prepare` on the dataset's `kind`: raw data → (cohort with splits, report)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from medmix.data import cohort as cohort_mod

KINDS = ("mimic4", "mimic3", "openi", "manifest", "ccrcc")


def build(kind: str, spec: dict, root: str | Path, optional: list[str], work: str | Path) -> tuple[pl.DataFrame, dict]:
    """Build the cohort of one dataset. `spec` is the dataset's config entry (prepare_spec);
    `work` is a folder for intermediate files (the ccRCC manifest)."""
    sp = spec["split"]
    if kind == "mimic4":
        from medmix.data.mimic4 import build_cohort
        cohort, report = build_cohort(root, note_root=spec["note_root"] or None, cxr_root=spec["cxr_root"] or None,
                                      prediction_hours=spec["prediction_hours"], min_age=spec["min_age"],
                                      lab_lookback_hours=spec["lab_lookback_hours"], optional_tables=optional)
        return cohort_mod.assign_splits(cohort, sp["train"], sp["val"], sp["seed"]), report
    if kind == "mimic3":
        from medmix.data.mimic3 import build_cohort
        cohort, report = build_cohort(root, prediction_hours=spec["prediction_hours"], min_age=spec["min_age"],
                                      lab_lookback_hours=spec["lab_lookback_hours"],
                                      itemid_map=spec["itemid_map"] or None, optional_tables=optional)
        return cohort_mod.assign_splits(cohort, sp["train"], sp["val"], sp["seed"]), report
    if kind == "openi":
        from medmix.data.openi import build_cohort
        return build_cohort(root, images=spec["images"] or None, split_file=spec["split_file"] or None,
                            top_k=spec["top_k"], split=sp, optional_tables=optional)
    if kind == "manifest":
        from medmix.data.manifest import build_cohort
        return build_cohort(spec["manifest"] or Path(root) / "manifest.csv", root=root, tasks=spec["tasks"],
                            inputs=spec["inputs"], split=sp)
    if kind == "ccrcc":
        from medmix.data.ccrcc import TASKS, INPUTS, write_manifest
        from medmix.data.manifest import build_cohort
        man, adapter = write_manifest(root, Path(work) / "manifest.csv", horizon_months=spec["horizon_months"],
                                      optional_tables=optional)
        cohort, report = build_cohort(man, root=root, tasks=TASKS, inputs=INPUTS, split=sp)
        report["adapter"] = adapter
        report["warnings"] = adapter.pop("warnings", []) + report.get("warnings", [])
        return cohort, report
    raise ValueError(kind)
