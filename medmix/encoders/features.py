"""`features`: precomputed feature files pooled to one vector per input.

For inputs that another tool has already embedded, e.g. whole-slide images tiled and encoded by a
TRIDENT- or CLAM-style extractor (one file per slide, one row per tile). Read:

- `.h5` / `.hdf5`: the dataset `features` (what TRIDENT and CLAM write; a file with a single
  dataset is read whatever its name), shape [tiles, D], [1, tiles, D] or [D];
- `.npy`; `.npz` (the array `features`, or its only array);
- `.pt` / `.pth`: a tensor, or a dict holding one under `features` (loaded with
  `weights_only=True`: no pickled code runs).

Pooling over the tiles: `mean` (default), `max`, or `mean_max` (both, concatenated: 2 D). Nothing
is fitted, so the same file gives the same vector in every split. The feature width D is the one
most inputs have; an input of another width, an unreadable or empty file, a file without tiles,
or one holding NaN/inf marks that sample's modality missing, counted by reason
(`wrong_feature_dim`, `unreadable_features`, `empty_file`, `file_not_found`, `no_tiles`,
`non_finite_features`), as unreadable images are.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from medmix.encoders.base import Batch, BatchedEncoder, Plan, register_encoder

_POOLINGS = ("mean", "max", "mean_max")


class _Bad(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _h5_dataset(f):
    if "features" in f:
        return f["features"]
    import h5py
    sets = [v for v in f.values() if isinstance(v, h5py.Dataset)]
    if len(sets) != 1:
        raise _Bad("unreadable_features")
    return sets[0]


def _as_tiles(a: np.ndarray) -> np.ndarray:
    """[D] → [1, D]; [1, tiles, D] → [tiles, D]; [tiles, D] as is; anything else is unreadable."""
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
        raise _Bad("unreadable_features")
    return a


def read_features(path: str, shape_only: bool = False):
    """One feature file → its [tiles, D] array (float32), or only its shape."""
    p = Path(path)
    if not p.exists():
        raise _Bad("file_not_found")
    if p.is_file() and os.path.getsize(p) == 0:
        raise _Bad("empty_file")
    name = p.name.lower()
    try:
        if name.endswith((".h5", ".hdf5")):
            import h5py
            with h5py.File(p, "r") as f:
                ds = _h5_dataset(f)
                if shape_only:
                    return _as_tiles(np.empty(ds.shape, ds.dtype)).shape
                a = ds[()]
        elif name.endswith(".npy"):
            a = np.load(p, mmap_mode="r" if shape_only else None, allow_pickle=False)
        elif name.endswith(".npz"):
            with np.load(p, allow_pickle=False) as z:
                key = "features" if "features" in z.files else (z.files[0] if len(z.files) == 1 else None)
                if key is None:
                    raise _Bad("unreadable_features")
                a = z[key]
        elif name.endswith((".pt", ".pth")):
            import torch
            obj = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(obj, dict):
                obj = obj.get("features")
            if not isinstance(obj, torch.Tensor):
                raise _Bad("unreadable_features")
            a = obj.float().numpy()
        else:
            raise _Bad("unreadable_features")
    except _Bad:
        raise
    except Exception:  # noqa: BLE001 - a truncated or malformed file of any format
        raise _Bad("unreadable_features") from None
    a = _as_tiles(np.asarray(a))
    return a.shape if shape_only else a.astype(np.float32, copy=False)


def pool(a: np.ndarray, how: str) -> np.ndarray:
    if how == "max":
        return a.max(0)
    if how == "mean_max":
        return np.concatenate([a.mean(0), a.max(0)])
    return a.mean(0)


@register_encoder("features")
class FeatureEncoder(BatchedEncoder):
    """Precomputed per-tile (or per-input) features, pooled: `pooling` mean (default), max, mean_max."""
    input = "features"
    preprocessing_keys = ("pooling",)

    def _load(self):
        how = "mean" if self.cfg.pooling == "auto" else self.cfg.pooling
        if how not in _POOLINGS:
            from medmix.io import MedmixError
            raise MedmixError(f"features encoder: pooling '{how}' is not one of {', '.join(_POOLINGS)}")
        return how

    def model_name(self) -> str:
        return f"features:{self.load()}"

    def weights_hash(self) -> str:
        return "none"   # no weights: the files are the inputs

    def prepare(self, items: list) -> Plan:
        """Each file's width is read (headers only where the format allows); the most common width is
        the cache's, and a file of another width is counted as `wrong_feature_dim`."""
        self.load()
        width, skipped = {}, {}
        for i, path in enumerate(items):
            try:
                width[i] = read_features(path, shape_only=True)[1]
            except _Bad as e:
                skipped[i] = e.reason
        if width:
            common = Counter(width.values()).most_common()
            top = max(n for _, n in common)
            dim = min(d for d, n in common if n == top)     # a tie goes to the smaller width, deterministically
            skipped.update({i: "wrong_feature_dim" for i, d in width.items() if d != dim})
        keep = np.array([i for i in range(len(items)) if i not in skipped], np.int64)
        bs = self.batch_size()
        return Plan([keep[s:s + bs] for s in range(0, len(keep), bs)], dict(sorted(skipped.items())))

    def iter_batches(self, items, plan, todo, workers=0):
        import torch
        how = self.load()
        for k in todo:
            vecs, reasons = [], []
            for i in plan.batches[k]:
                try:
                    a = read_features(items[i])
                    if a.shape[0] == 0:
                        raise _Bad("no_tiles")
                    if not np.isfinite(a).all():
                        raise _Bad("non_finite_features")
                    vecs.append(pool(a, how))
                    reasons.append("")
                except _Bad as e:
                    reasons.append(e.reason)
            x = torch.from_numpy(np.stack(vecs)) if vecs else torch.zeros(0, 1)
            yield k, Batch({"x": x}, reasons)

    def forward(self, rows):
        return rows["x"]
