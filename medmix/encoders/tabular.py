"""`ehr_tabular`: the serialised EHR text (`variable_name: value; ...`) read back as numbers.

The variable vocabulary, means and standard deviations are fitted on the train split only and
stored with the cache (`fit_state`). Output per variable: the standardised value (0 when absent)
and a missing indicator, so absence itself is a feature. Categorical values become
indicator variables (`gender=F`); NaN/inf values and values beyond float32's range (1e38: they
would become inf) are counted (`non_finite_values`) and treated as absent; values beyond 10 train
standard deviations are clipped there and counted (`clipped_values`).
"""

from __future__ import annotations

import math

import numpy as np

from medmix.encoders.base import EncodeResult, Encoder, register_encoder


_F32_MAX = float(np.finfo(np.float32).max)


def parse_serialised(text: str) -> tuple[dict[str, float], int]:
    """'a: 1; b: x; c: nan' → ({'a': 1.0, 'b=x': 1.0}, 1 non-finite value)."""
    out, bad = {}, 0
    for part in text.split(";"):
        name, sep, val = part.rpartition(":")
        name = name.strip()
        if not sep or not name:
            continue
        val = val.strip()
        try:
            v = float(val)
        except ValueError:  # a categorical value becomes an indicator variable, e.g. "gender=F"
            out[f"{name}={val}"] = 1.0
            continue
        if not math.isfinite(v) or abs(v) > _F32_MAX:
            bad += 1
            continue
        out[name] = v
    return out, bad


def _matrix(parsed: list[dict | None], names: list[str]) -> np.ndarray:
    col = {k: j for j, k in enumerate(names)}
    x = np.full((len(parsed), len(names)), np.nan, np.float32)
    for i, p in enumerate(parsed):
        if p is not None:
            for k, v in p.items():
                if k in col:
                    x[i, col[k]] = v
    return x


def _standardise(parsed: list[dict | None], x: np.ndarray, state: dict) -> tuple[np.ndarray, np.ndarray]:
    z = (x - np.asarray(state["mean"], np.float32)) / np.asarray(state["sd"], np.float64)
    miss = np.isnan(z)
    z = np.clip(np.where(miss, 0.0, z), -10, 10)  # clip absurd values at 10 sd
    emb = np.concatenate([z, miss.astype(np.float32)], axis=1).astype(np.float32)
    present = np.array([p is not None for p in parsed], dtype=bool)
    emb[~present] = 0
    return emb, present


def apply_state(values: list[str | None], state: dict) -> tuple[np.ndarray, np.ndarray]:
    """Encode serialised EHR texts with a fitted state (variables, train mean/sd) of another
    cohort: the cross-cohort use, where the encoder must stay as trained on the source."""
    parsed = []
    for v in values:
        d = parse_serialised(v)[0] if v is not None and v.strip() else None
        parsed.append(d or None)
    return _standardise(parsed, _matrix(parsed, state["variables"]), state)


@register_encoder("ehr_tabular")
class TabularEncoder(Encoder):
    input = "text"
    fitted = True

    def model_name(self) -> str:
        return "ehr_tabular"

    def weights_hash(self) -> str:
        return "fitted-on-train"

    def apply(self, values, fit_state: dict, fit_file=None) -> tuple[np.ndarray, np.ndarray]:
        """Encode with a stored fit (variables, train mean/sd) instead of refitting."""
        return apply_state(values, fit_state)

    def encode(self, values, split) -> EncodeResult:
        parsed: list[dict | None] = []
        bad = 0
        for v in values:
            if v is None or not v.strip():
                parsed.append(None)
                continue
            d, b = parse_serialised(v)
            bad += b
            parsed.append(d or None)
        train = [p for p, s in zip(parsed, split) if p is not None and s == "train"]
        names = sorted({k for p in train for k in p})
        is_train = np.array([s == "train" for s in split]) & np.array([p is not None for p in parsed])
        x = _matrix(parsed, names)
        mu = np.nanmean(x[is_train], axis=0) if is_train.any() else np.zeros(len(names))
        sd = np.nanstd(x[is_train], axis=0) if is_train.any() else np.ones(len(names))
        mu = np.nan_to_num(mu)
        sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        state = {"variables": names, "mean": [float(m) for m in mu], "sd": [float(s) for s in sd]}
        emb, present = _standardise(parsed, x, state)
        z = (x - np.asarray(state["mean"], np.float32)) / np.asarray(state["sd"], np.float64)
        clipped = int((np.abs(np.nan_to_num(z)) > 10).sum())
        counts = {k: v for k, v in (("non_finite_values", bad), ("clipped_values", clipped)) if v}
        return EncodeResult(emb, present, counts, fit_state=state)
