"""The methods a config can list (the {method} wildcard), described as data.

Kept free of torch so that the Snakefile can ask which inputs a method needs at parse time.
"""

from __future__ import annotations

# name -> architecture and options; `teacher`: reads teacher embeddings (training only, except
# teacher_deployed which uses them at inference and is the accuracy/cost reference).
METHODS: dict[str, dict] = {
    "medmix": {"arch": "medmix", "intra": "gated", "inter": "gated", "teacher": True},
    "medmix_noteacher": {"arch": "medmix", "intra": "gated", "inter": "gated", "teacher": False},
    "medmix_intra_mean": {"arch": "medmix", "intra": "mean", "inter": "gated", "teacher": True},
    "medmix_inter_concat": {"arch": "medmix", "intra": "gated", "inter": "concat", "teacher": True},
    "medmix_single_expert": {"arch": "medmix", "intra": "gated", "inter": "gated", "teacher": True,
                             "single_expert": True},  # best expert per modality, chosen on validation
    "early_concat": {"arch": "early_concat", "teacher": False},
    "logreg_concat": {"arch": "logreg", "teacher": False},
    "teacher_deployed": {"arch": "medmix", "intra": "gated", "inter": "gated", "teacher": False,
                         "inputs": "teachers"},  # the teacher branch used at inference: the cost reference
    "late_fusion": {"arch": "late_fusion", "teacher": False},
}


def method_spec(name: str) -> dict:
    """Spec of a method name; `unimodal_<modality>` is MedMIX (no teacher) on one modality."""
    if name in METHODS:
        return dict(METHODS[name])
    if name.startswith("unimodal_") and len(name) > len("unimodal_"):
        return {"arch": "medmix", "intra": "gated", "inter": "gated", "teacher": False,
                "only": name[len("unimodal_"):]}
    raise KeyError(name)


def uses_teacher(name: str) -> bool:
    """Whether the method reads teacher embeddings (for training, or at inference for teacher_deployed)."""
    spec = method_spec(name)
    return bool(spec["teacher"]) or spec.get("inputs") == "teachers"
