"""The embed stage: one (cohort, modality, encoder) → one HDF5 cache, optionally in shards.

Identical inputs are encoded once (texts by content, images by path) and fanned out; a sample
with several images gets the mean of its readable images' embeddings.

The unique inputs are split by the encoder into one deterministic plan of batches. Shard i of n
(`--shard i/n`) encodes batches k with k % n == i and writes a shard file; `merge_shards` joins
the shards and fans out exactly as an unsharded run does, so both give the same bytes. While a
job runs it checkpoints finished batches (atomically written chunk files in a hidden directory
beside the output, keyed by the spec, the cohort and the shard); a rerun after a crash or a
SIGKILL skips them. The checkpoint is removed once the output is in place.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import h5py
import numpy as np

from medmix.config import EncoderSpec, encoder_identity
from medmix.data import cohort as cohort_mod
from medmix.encoders import create_encoder
from medmix.encoders.base import BatchOut, BatchRunner, Plan, assemble, count_reasons
from medmix.encoders.cache import cohort_hash, read_attrs, write_cache
from medmix.io import MedmixError, atomic_path, hash_strings, output_lock, stable_hash

log = logging.getLogger("medmix.embed")


def unique_inputs(values: list, enc) -> tuple[list[str], list[list[int]]]:
    """Distinct inputs (sorted) and, per sample, the indices of its inputs among them."""
    if enc.input in ("image", "features"):   # a path or a list of paths (e.g. several slides)
        lists = [[] if v is None else ([v] if isinstance(v, str) else list(v)) for v in values]
    else:
        lists = [[] if v is None else [str(v)] for v in values]
    uniq = sorted({p for v in lists for p in v})
    where = {p: i for i, p in enumerate(uniq)}
    return uniq, [[where[p] for p in v] for v in lists]


def fan_out(per_sample: list[list[int]], emb_u: np.ndarray, present_u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique-input embeddings → per-sample embeddings (mean over the sample's readable inputs)."""
    emb = np.zeros((len(per_sample), emb_u.shape[1]), np.float32)
    present = np.zeros(len(per_sample), bool)
    for i, rows in enumerate(per_sample):
        ok = [r for r in rows if present_u[r]]
        if ok:
            emb[i] = emb_u[ok[0]] if len(ok) == 1 else emb_u[ok].mean(0)
            present[i] = True
    return emb, present


def parse_shard(text: str | None) -> tuple[int, int]:
    """'2/8' → (2, 8); None → (0, 1)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise MedmixError(f"--shard '{text}': expected I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise MedmixError(f"--shard '{text}': need 0 <= I < N")
    return i, n


class Checkpoint:
    """Finished batches of one embed job, as atomically written chunk files in a hidden directory."""

    def __init__(self, out: Path, meta: dict):
        self.meta = meta
        self.dir = out.parent / f".{out.name}.ckpt-{stable_hash(meta)}"

    def load(self) -> dict[int, BatchOut]:
        done: dict[int, BatchOut] = {}
        if not self.dir.exists():
            return done
        try:
            if json.loads((self.dir / "meta.json").read_text()) != self.meta:
                return done
        except (OSError, ValueError):
            return done
        for f in sorted(self.dir.glob("chunk-*.npz")):
            try:
                z = np.load(f, allow_pickle=False)
                for k in z["batches"].tolist():
                    done[k] = BatchOut(z[f"rows_{k}"], z[f"emb_{k}"], z[f"reasons_{k}"].tolist())
            except (OSError, KeyError, ValueError):  # a chunk cut short cannot exist (atomic), but be safe
                log.warning("ignoring unreadable checkpoint chunk %s", f)
        return done

    def save(self, outs: dict[int, BatchOut]) -> None:
        if not outs:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if not meta.exists():
            with atomic_path(meta) as tmp:
                tmp.write_text(json.dumps(self.meta, sort_keys=True))
        arrays = {"batches": np.array(sorted(outs), np.int64)}
        for k, o in outs.items():
            arrays[f"rows_{k}"] = np.asarray(o.rows, np.int64)
            arrays[f"emb_{k}"] = o.emb
            arrays[f"reasons_{k}"] = np.array(o.reasons, dtype=str) if o.reasons else np.zeros(0, dtype="<U1")
        with atomic_path(self.dir / f"chunk-{min(outs):07d}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _cache_attrs(enc, slug: str, spec: dict, modality: str, ids: list, values: list) -> dict:
    return {"encoder": slug, "kind": spec["kind"], "modality": modality, "model_name": enc.model_name(),
            "weights_hash": enc.weights_hash(), "preprocessing_hash": enc.preprocessing_hash(),
            "spec_hash": stable_hash(spec), "cohort_hash": cohort_hash(ids, values), "spec": spec}


def _read_cohort(cohort_path, modality):
    cohort = cohort_mod.read(cohort_path)
    if modality not in cohort.columns:
        raise MedmixError(f"{cohort_path}: no column '{modality}' (modalities: "
                          f"{', '.join(cohort_mod.modalities_of(cohort))})")
    return cohort["sample_id"].to_list(), cohort["split"].to_list(), cohort[modality].to_list()


def _finish(out, ids, values, per_sample, emb_u, present_u, reasons_u, attrs, spec, extra=None) -> dict:
    emb, present = fan_out(per_sample, emb_u, present_u)
    missing = count_reasons(reasons_u)
    attrs = {**attrs, "n": len(ids), "n_present": int(present.sum()), "missing": missing, "fit_state": {}}
    write_cache(out, ids, emb, present, attrs, dtype=EncoderSpec.from_dict(spec).dtype)
    return {"samples": len(ids), "inputs": sum(v is not None for v in values), "unique_inputs": len(emb_u),
            "present": int(present.sum()), "missing_by_reason": missing, "dim": int(emb.shape[1]), **(extra or {})}


def run_embed(cohort_path: str | Path, modality: str, slug: str, spec: dict, out: str | Path,
              device: str | None = None, workers: int = 0, shard: tuple[int, int] = (0, 1),
              checkpoint_every: int = 20, checkpoint_seconds: float = 300.0, progress: bool = True) -> dict:
    """Encode one modality of a cohort with one encoder; write the cache (or shard i of n); return a summary.

    `checkpoint_every` batches (or `checkpoint_seconds`, whichever comes first) are written to the
    checkpoint; a rerun with the same spec, cohort and shard resumes from it. Two runs of the same
    output never interleave: the second waits on the output's lock (`output_lock`).
    """
    with output_lock(out):
        return _run_embed(cohort_path, modality, slug, spec, out, device, workers, shard, checkpoint_every,
                          checkpoint_seconds, progress)


def _run_embed(cohort_path, modality, slug, spec, out, device, workers, shard, checkpoint_every,
               checkpoint_seconds, progress) -> dict:
    import torch
    int8 = spec.get("precision") == "int8"  # a CPU path: never the default GPU
    device = device or ("cuda" if torch.cuda.is_available() and not int8 else "cpu")
    spec = encoder_identity(spec)
    out = Path(out)
    ids, split, values = _read_cohort(cohort_path, modality)
    enc = create_encoder(spec, device)
    i, n = shard
    t0 = time.perf_counter()
    if enc.fitted:
        if n > 1:
            raise MedmixError(f"encoder {slug} ({spec['kind']}) is fitted on the whole train split and cannot be "
                              "sharded: set its `shards` to 1")
        res = enc.encode(values, split)
        attrs = {**_cache_attrs(enc, slug, spec, modality, ids, values), "n": len(ids),
                 "n_present": int(res.present.sum()), "missing": res.missing, "fit_state": res.fit_state or {}}
        if res.fit_arrays is not None:  # the fitted model, beside the cache (written first: the cache marks completion)
            with atomic_path(fit_path(out)) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **res.fit_arrays)
        write_cache(out, ids, res.emb, res.present, attrs, dtype=enc.cfg.dtype)
        return {"samples": len(ids), "inputs": sum(v is not None for v in values), "unique_inputs": None,
                "present": int(res.present.sum()), "missing_by_reason": res.missing, "dim": int(res.emb.shape[1]),
                "seconds": round(time.perf_counter() - t0, 2), "device": device}

    uniq, per_sample = unique_inputs(values, enc)
    plan = enc.prepare(uniq) if uniq else None
    n_batches = len(plan.batches) if plan else 0
    mine = [k for k in range(n_batches) if k % n == i]
    attrs = _cache_attrs(enc, slug, spec, modality, ids, values)
    ckpt = Checkpoint(out, {"spec_hash": attrs["spec_hash"], "cohort_hash": attrs["cohort_hash"],
                            "inputs_hash": hash_strings(uniq), "shard": [i, n], "batches": n_batches})
    done = {k: o for k, o in ckpt.load().items() if k in set(mine)}
    resumed = len(done)
    if resumed:
        log.info("resuming from %s: %d of %d batches done", ckpt.dir, resumed, len(mine))
    todo = [k for k in mine if k not in done]
    pending: dict[int, BatchOut] = {}
    last = [time.perf_counter()]

    def on_batch(k: int, o: BatchOut) -> None:
        pending[k] = o
        if len(pending) >= checkpoint_every or time.perf_counter() - last[0] >= checkpoint_seconds:
            ckpt.save(pending)
            pending.clear()
            last[0] = time.perf_counter()

    runner = BatchRunner(enc, progress=progress)
    t1 = time.perf_counter()
    if plan is not None:
        done.update(runner.run(uniq, plan, todo, workers=workers, on_batch=on_batch))
    ckpt.save(pending)  # if writing the output fails below, the rerun still finds every batch
    dt = time.perf_counter() - t1
    n_items = sum(len(plan.batches[k]) for k in todo) if plan else 0
    extra = {"seconds": round(time.perf_counter() - t0, 2), "device": device, "batches": n_batches,
             "batches_this_job": len(mine), "resumed_batches": resumed, "batch_cap": runner.cap,
             "items_per_s": round(n_items / dt, 1) if dt > 0 and n_items else None}
    plan = plan or Plan([])
    if n == 1:
        emb_u, present_u, reasons_u = assemble(len(uniq), plan, done)
        summary = _finish(out, ids, values, per_sample, emb_u, present_u, reasons_u, attrs, spec, extra)
    else:
        _write_shard(out, attrs, uniq, plan, done, i, n)
        summary = {"shard": f"{i}/{n}", "unique_inputs": len(uniq), **extra}
    ckpt.clear()
    log.info("embed %s/%s: %s", modality, slug, summary)
    return summary


def fit_path(out: str | Path) -> Path:
    """Where a fitted encoder's model is stored: beside the cache, `{encoder}.fit.npz`."""
    out = Path(out)
    return out.with_name(out.stem + ".fit.npz")


def _write_shard(out: Path, attrs: dict, uniq: list, plan, done: dict[int, BatchOut], i: int, n: int) -> None:
    rows = np.concatenate([done[k].rows for k in sorted(done)]) if done else np.zeros(0, np.int64)
    d = max((o.emb.shape[1] for o in done.values()), default=0)
    emb = np.concatenate([o.emb if o.emb.shape[1] == d else np.zeros((len(o.rows), d), np.float32)
                          for _, o in sorted(done.items())]) if done else np.zeros((0, d), np.float32)
    reasons = [r for _, o in sorted(done.items()) for r in o.reasons]
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("rows", data=rows.astype(np.int64))
            f.create_dataset("batches", data=np.array(sorted(done), np.int64))
            f.create_dataset("batch_sizes", data=np.array([len(done[k].rows) for k in sorted(done)], np.int64))
            f.create_dataset("emb", data=emb)
            f.create_dataset("reason", data=np.array(reasons, dtype=object), dtype=h5py.string_dtype("utf-8"))
            f.attrs["cache_attrs"] = json.dumps(attrs, sort_keys=True)
            f.attrs["inputs_hash"] = hash_strings(uniq)
            f.attrs["n_unique"] = len(uniq)
            f.attrs["n_batches"] = len(plan.batches)
            f.attrs["skipped"] = json.dumps({str(k): v for k, v in plan.skipped.items()}, sort_keys=True)
            f.attrs["shard"] = i
            f.attrs["n_shards"] = n


def merge_shards(cohort_path: str | Path, modality: str, slug: str, spec: dict, shards: list[str | Path],
                 out: str | Path) -> dict:
    """Join shard files into the cache an unsharded run writes (same ids, embeddings and attributes)."""
    with output_lock(out):
        return _merge_shards(cohort_path, modality, slug, spec, shards, out)


def _merge_shards(cohort_path, modality, slug, spec, shards, out) -> dict:
    spec = encoder_identity(spec)
    ids, _, values = _read_cohort(cohort_path, modality)
    enc = create_encoder(spec, "cpu")  # for the input kind only: no weights are loaded
    uniq, per_sample = unique_inputs(values, enc)
    expect_attrs = {"encoder": slug, "spec_hash": stable_hash(spec), "cohort_hash": cohort_hash(ids, values)}
    done: dict[int, BatchOut] = {}
    seen: dict[int, str] = {}
    first = None
    for p in shards:
        try:
            f = h5py.File(p, "r")
        except OSError as e:
            raise MedmixError(f"{p}: not a readable shard file ({e})") from None
        with f:
            a = json.loads(f.attrs["cache_attrs"])
            for k, v in expect_attrs.items():
                if a.get(k) != v:
                    raise MedmixError(f"{p}: shard of a different run: attribute '{k}' is {a.get(k)!r}, expected "
                                      f"{v!r}; rerun its embed shard job")
            if f.attrs["inputs_hash"] != hash_strings(uniq):
                raise MedmixError(f"{p}: shard of a different cohort: its inputs do not match {cohort_path}")
            i, n = int(f.attrs["shard"]), int(f.attrs["n_shards"])
            if first is None:
                first = (a, n, json.loads(f.attrs["skipped"]), int(f.attrs["n_batches"]))
            elif (a, n) != first[:2]:
                raise MedmixError(f"{p}: shard {i}/{n} does not belong with {shards[0]} (attributes or shard count differ)")
            if i in seen:
                raise MedmixError(f"{p}: shard {i}/{n} given twice (also {seen[i]})")
            seen[i] = str(p)
            rows, emb, reasons = f["rows"][:], f["emb"][:], [r.decode() if isinstance(r, bytes) else r for r in f["reason"][:]]
            pos = 0
            for k, size in zip(f["batches"][:].tolist(), f["batch_sizes"][:].tolist()):
                done[k] = BatchOut(rows[pos:pos + size], emb[pos:pos + size], reasons[pos:pos + size])
                pos += size
    if first is None:
        raise MedmixError("merge: no shard files given")
    attrs, n, skipped, n_batches = first
    missing = sorted(set(range(n)) - set(seen))
    if missing:
        raise MedmixError(f"merge: shards {missing} of {n} are missing for {slug}")
    if set(done) != set(range(n_batches)):
        raise MedmixError(f"merge: the shards of {slug} hold {len(done)} of {n_batches} batches")
    plan = Plan([done[k].rows for k in range(n_batches)], {int(k): v for k, v in skipped.items()})
    emb_u, present_u, reasons_u = assemble(len(uniq), plan, done)
    return _finish(out, ids, values, per_sample, emb_u, present_u, reasons_u, attrs, spec, {"shards": n})



def stored_fit(cache: str | Path) -> tuple[dict, dict, Path | None]:
    """What a cache recorded about its encoder: (encoder config, fit state, fit file or None).
    The fit state and file are those of an encoder fitted on the train split (`fitted`); a frozen
    encoder has neither."""
    a = read_attrs(cache)
    spec = json.loads(a["spec"]) if isinstance(a.get("spec"), str) else {"kind": a.get("kind")}
    state = json.loads(a["fit_state"]) if isinstance(a.get("fit_state"), str) else {}
    fit = fit_path(cache)
    return spec, state, fit if fit.exists() else None


def apply_fit(enc, values: list, fit_state: dict, fit_file: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Encode `values` with a fitted encoder *as fitted on another cohort* (its stored state and
    fit file), never refitting: the one way cross-cohort evaluation, deploy bundles and the
    efficiency measurement apply a fitted encoder."""
    if not enc.fitted:
        raise MedmixError(f"encoder kind {enc.kind} is not fitted on a split; run it as an embed job")
    return enc.apply(values, fit_state, fit_file)


def embed_with_fit(cohort_path: str | Path, modality: str, slug: str, spec: dict, out: str | Path,
                   fit_state: dict, fit_file: str | Path | None, device: str | None = None) -> dict:
    """Encode a cohort with an encoder as fitted on another cohort (deploy bundles): non-fitted
    encoders run as in `run_embed`; fitted ones (ehr_tabular, tfidf_svd) go through `apply_fit`."""
    spec = encoder_identity(spec)
    enc = create_encoder(spec, device or "cpu")
    if not enc.fitted:
        return run_embed(cohort_path, modality, slug, spec, out, device=device, progress=False)
    ids, _, values = _read_cohort(cohort_path, modality)
    emb, present = apply_fit(enc, values, fit_state, fit_file)
    attrs = {**_cache_attrs(enc, slug, spec, modality, ids, values), "n": len(ids), "n_present": int(present.sum()),
             "missing": {"no_input_or_unparsable": int((~present).sum())}, "fit_state": fit_state,
             "fitted_on": "another cohort (stored fit)"}
    write_cache(out, ids, emb, present, attrs, dtype=EncoderSpec.from_dict(spec).dtype)
    return {"samples": len(ids), "present": int(present.sum()), "dim": int(emb.shape[1])}
