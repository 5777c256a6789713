"""The methods a config can list (the {method} wildcard), described as data, and the caches each reads.

Kept free of torch so that the Snakefile can ask which inputs a method needs at parse time.
To add a method: one entry in METHODS (its architecture registered in medmix.model), and its name
is valid in `methods:`; the parametrised tests pick it up (docs/design.md "Adding a method").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from medmix.io import from_dict_strict


@dataclass(frozen=True)
class MethodSpec:
    """What a method name means. Unknown keys are an error (`from_dict`)."""
    arch: str                       # a model registered in medmix.model (medmix, early_concat, late_fusion, logreg, impute_*)
    intra: str = "gated"            # intra-modality fusion (medmix arch)
    inter: str = "gated"            # inter-modality fusion (medmix arch)
    teacher: bool = False           # trains with the teacher branch (teacher embeddings, training only)
    inputs: str = "experts"         # the role it reads at inference: experts, or teachers (teacher_deployed)
    single_expert: bool = False     # keep the best expert per modality, chosen on validation
    only: str = ""                  # a single modality (unimodal_<modality>)
    train: tuple = ()               # ((key, value), ...): train settings the method fixes (ablation variants)

    @classmethod
    def from_dict(cls, d: dict) -> "MethodSpec":
        d = dict(d)
        if "train" in d:
            d["train"] = tuple(tuple(kv) for kv in d["train"])
        return from_dict_strict(cls, d, "method spec")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _teaching(schedule: str, kd: float, warmup: int = 0, weight: str = "none", align: str = "cosine",
              on: str = "modality") -> tuple:
    """Every setting of how the teacher teaches, fixed (the teacher ablation's variants, docs/teacher.md);
    λ_align stays the config's."""
    return (("teacher_schedule", schedule), ("lambda_kd", kd), ("kd_warmup", warmup), ("kd_weight", weight),
            ("align", align), ("align_on", on))


# name -> spec; `teacher`: reads teacher embeddings (training only, except teacher_deployed which
# uses them at inference and is the accuracy/cost reference).
METHODS: dict[str, MethodSpec] = {
    "medmix": MethodSpec("medmix", teacher=True),
    "medmix_noteacher": MethodSpec("medmix"),
    "medmix_intra_mean": MethodSpec("medmix", intra="mean", teacher=True),
    "medmix_inter_concat": MethodSpec("medmix", inter="concat", teacher=True),
    "medmix_single_expert": MethodSpec("medmix", teacher=True, single_expert=True),
    "medmix_reliability": MethodSpec("medmix", inter="reliability", teacher=True),
    # the teacher ablation: `medmix` teaches as the train block says; these fix how
    "medmix_joint": MethodSpec("medmix", teacher=True, train=_teaching("joint", 1.0)),            # the original
    "medmix_warmup": MethodSpec("medmix", teacher=True, train=_teaching("joint", 1.0, warmup=10)),
    "medmix_two_stage": MethodSpec("medmix", teacher=True, train=_teaching("two_stage", 1.0)),
    "medmix_confidence": MethodSpec("medmix", teacher=True, train=_teaching("two_stage", 1.0, weight="confidence")),
    "medmix_align_fused": MethodSpec("medmix", teacher=True, train=_teaching("joint", 0.0, on="both")),
    "medmix_relational": MethodSpec("medmix", teacher=True, train=_teaching("joint", 0.0, align="relational")),
    "early_concat": MethodSpec("early_concat"),
    "logreg_concat": MethodSpec("logreg"),
    "teacher_deployed": MethodSpec("medmix", inputs="teachers"),
    "late_fusion": MethodSpec("late_fusion"),
    # imputation baselines (medmix.model.imputation): absent inputs filled in, then early fusion
    "impute_zero": MethodSpec("impute_zero"),
    "impute_mean": MethodSpec("impute_mean"),
    "impute_token": MethodSpec("impute_token"),
    "impute_knn": MethodSpec("impute_knn"),
    # the field's missing-modality fusions on MedMIX's per-modality tokens, no teacher (medmix.model.fusion)
    "medfuse": MethodSpec("medmix", inter="lstm"),
    "sparse_moe": MethodSpec("medmix", inter="moe"),
    "shaspec": MethodSpec("medmix", inter="shaspec"),
    "drfuse": MethodSpec("medmix", inter="drfuse"),
}


def method_spec(name: str) -> MethodSpec:
    """Spec of a method name; `unimodal_<modality>` is MedMIX (no teacher) on one modality."""
    if name in METHODS:
        return METHODS[name]
    if name.startswith("unimodal_") and len(name) > len("unimodal_"):
        return MethodSpec("medmix", only=name[len("unimodal_"):])
    raise KeyError(name)


def uses_teacher(name: str) -> bool:
    """Whether the method reads teacher embeddings (for training, or at inference for teacher_deployed)."""
    spec = method_spec(name)
    return spec.teacher or spec.inputs == "teachers"


def method_caches(name: str, modalities: dict, inference: bool = False) -> list[tuple[str, str]]:
    """The (modality, encoder) caches a method reads on a dataset with these `modalities` (the
    config's modality → {experts, teachers}): what its train job (or, `inference=True`, its
    deployed model) needs. The one place that decides it; the workflow asks here."""
    spec = method_spec(name)
    roles = [spec.inputs] if inference or spec.inputs == "teachers" else ["experts"] + (["teachers"] * spec.teacher)
    mods = [spec.only] if spec.only else sorted(modalities)
    return sorted({(m, slug) for m in mods if m in modalities for r in roles for slug in modalities[m][r]})
