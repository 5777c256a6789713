"""`tfidf_svd`: TF-IDF of word n-grams reduced by truncated SVD (LSA), fitted on the train split only.

A fully offline text expert with no weights to download. The vocabulary, idf weights and SVD
components are returned as `fit_arrays`; the embed stage stores them beside the cache
(`{encoder}.fit.npz`) so the same transform can be applied to new texts (`TfidfSvd.load`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medmix.encoders.base import EncodeResult, Encoder, register_encoder
from medmix.io import MedmixError


class TfidfSvd:
    """The fitted transform: texts → (N, dim) float32, L2-normalised rows."""

    def __init__(self, vocabulary: list[str], idf: np.ndarray, components: np.ndarray, ngram_max: int):
        from sklearn.feature_extraction.text import TfidfVectorizer
        self.vec = TfidfVectorizer(vocabulary={w: i for i, w in enumerate(vocabulary)}, ngram_range=(1, ngram_max),
                                   sublinear_tf=True, dtype=np.float32)
        self.vec.idf_ = idf
        self.components = components.astype(np.float32)  # (dim, V)
        self.vocabulary, self.ngram_max = vocabulary, ngram_max

    @classmethod
    def fit(cls, texts: list[str], dim: int, max_features: int, ngram_max: int, seed: int) -> "TfidfSvd":
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        vec = TfidfVectorizer(max_features=max_features, ngram_range=(1, ngram_max), sublinear_tf=True,
                              dtype=np.float32)
        x = vec.fit_transform(texts)
        k = max(1, min(dim, x.shape[0] - 1, x.shape[1] - 1))
        svd = TruncatedSVD(n_components=k, random_state=seed).fit(x)
        vocab = [w for w, _ in sorted(vec.vocabulary_.items(), key=lambda t: t[1])]
        return cls(vocab, vec.idf_, svd.components_, ngram_max)

    def transform(self, texts: list[str]) -> np.ndarray:
        z = np.asarray(self.vec.transform(texts) @ self.components.T, dtype=np.float32)
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-8)

    def arrays(self) -> dict:
        return {"vocabulary": np.array(self.vocabulary, dtype=str), "idf": self.vec.idf_,
                "components": self.components, "ngram_max": np.array(self.ngram_max)}

    @classmethod
    def load(cls, path: str | Path) -> "TfidfSvd":
        try:
            z = np.load(path, allow_pickle=False)
            return cls(z["vocabulary"].tolist(), z["idf"], z["components"], int(z["ngram_max"]))
        except (OSError, KeyError, ValueError) as e:
            raise MedmixError(f"{path}: not a tfidf_svd fit file ({e})") from None


@register_encoder("tfidf_svd")
class TfidfSvdEncoder(Encoder):
    input = "text"
    fitted = True
    preprocessing_keys = ("dim", "max_features", "ngram_max", "seed")

    def model_name(self) -> str:
        return "tfidf_svd"

    def weights_hash(self) -> str:
        return "fitted-on-train"

    def apply(self, values, fit_state: dict, fit_file=None) -> tuple[np.ndarray, np.ndarray]:
        """Encode with the stored fitted model (`{cache}.fit.npz`) instead of refitting."""
        if not fit_file or not Path(fit_file).exists():
            raise MedmixError(f"tfidf_svd: the fitted model {fit_file} is missing (it is written beside the cache)")
        model = TfidfSvd.load(fit_file)
        ok = np.array([v is not None and bool(str(v).strip()) for v in values], dtype=bool)
        emb = np.zeros((len(values), model.components.shape[0]), np.float32)
        idx = np.flatnonzero(ok)
        if len(idx):
            emb[idx] = model.transform([str(values[i]) for i in idx])
        return emb, ok

    def encode(self, values, split, workers: int = 0) -> EncodeResult:
        n = len(values)
        ok = np.array([v is not None and bool(str(v).strip()) for v in values])
        train = [str(v) for v, s, o in zip(values, split, ok) if o and s == "train"]
        if len(train) < 2:
            raise MedmixError(f"tfidf_svd: needs at least 2 non-empty training texts to fit, got {len(train)}")
        model = TfidfSvd.fit(train, self.cfg.dim, self.cfg.max_features, self.cfg.ngram_max, self.cfg.seed)
        emb = np.zeros((n, model.components.shape[0]), np.float32)
        idx = np.flatnonzero(ok)
        if len(idx):
            emb[idx] = model.transform([str(values[i]) for i in idx])
        empty = sum(1 for v in values if v is not None and not str(v).strip())
        return EncodeResult(emb, ok, {"empty_text": empty} if empty else {},
                            fit_state={"fitted_on": "train", "n_train": len(train), "dim": int(emb.shape[1]),
                                       "vocabulary_size": len(model.vocabulary)},
                            fit_arrays=model.arrays())
