import numpy as np
import pytest

from medmix.embed import run_embed
from medmix.encoders import create_encoder
from medmix.encoders.cache import read_attrs, read_cache
from medmix.encoders.tabular import parse_serialised
from medmix.io import MedmixError

from conftest import TINY_CONFIG


def _spec(slug):
    from medmix import config
    return config.validate(TINY_CONFIG)["encoders"][slug]


@pytest.mark.parametrize("slug", ["bert_head", "minilm"])
def test_text_encoder_restores_order_and_marks_empty_missing(slug):
    enc = create_encoder(_spec(slug))
    texts = ["short note", "a much longer note " * 10, "   ", "mid length note here"]
    res = enc.encode(texts)
    assert res.present.tolist() == [True, True, False, True]
    assert res.missing == {"empty_text": 1}
    again = enc.encode([texts[3], texts[0], texts[1]])
    np.testing.assert_allclose(again.emb[0], res.emb[3], atol=1e-5)
    np.testing.assert_allclose(again.emb[1], res.emb[0], atol=1e-5)


def test_truncation_side_chooses_the_visible_end():
    a = "alpha beta gamma " * 20 + "pneumothorax"
    b = "alpha beta gamma " * 20 + "effusion"
    head = create_encoder({**_spec("bert_head"), "max_length": 16}).encode([a, b]).emb
    tail = create_encoder({**_spec("bert_tail"), "max_length": 16, "seed": 1}).encode([a, b]).emb
    assert np.allclose(head[0], head[1], atol=1e-6)        # both see only the shared beginning
    assert not np.allclose(tail[0], tail[1], atol=1e-3)    # the left-truncating one sees the end


def test_int8_is_opt_in_quantised_close_to_fp32_and_its_own_cache_identity():
    """`precision: int8` quantises the text model's linear layers (PyTorch dynamic quantisation),
    stays close to fp32, hashes as a different spec (an int8 cache is never read as an fp32 one),
    and is refused where it does not apply (image encoders, a GPU)."""
    from medmix.io import stable_hash
    texts = ["no acute cardiopulmonary abnormality", "a much longer note about the lungs " * 4, "mid length note"]
    fp32 = create_encoder(_spec("minilm"))
    int8 = create_encoder({**_spec("minilm"), "precision": "int8"})
    a, b = fp32.encode(texts).emb, int8.encode(texts).emb
    _, model = int8.load()
    def quantised(net):
        return sum(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in net.modules())
    assert quantised(model) > 0 and quantised(fp32.load()[1]) == 0
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.8 and not np.allclose(a, b)
    assert stable_hash(fp32.spec) != stable_hash(int8.spec)
    with pytest.raises(MedmixError, match="int8 applies to hf_text and hf_llm"):
        create_encoder({**_spec("vit_low"), "precision": "int8"}).load()
    with pytest.raises(MedmixError, match="int8 is a CPU path"):
        create_encoder({**_spec("minilm"), "precision": "int8"}, device="cuda").load()


def test_an_int8_embed_job_runs_on_the_cpu_even_where_a_gpu_is_visible(tiny_results, tmp_path, monkeypatch):
    """The embed device defaults to a visible GPU, but never for the int8 CPU path (the workflow
    passes no device: an int8 study on a GPU node must not stop with the GPU error)."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    s = run_embed(tiny_results / "tiny" / "cohort.parquet", "notes", "minilm", {**_spec("minilm"), "precision": "int8"},
                  tmp_path / "int8.h5", progress=False)
    assert s["device"] == "cpu" and (tmp_path / "int8.h5").exists()


def test_image_encoder_counts_bad_files(tmp_path, tiny_raw):
    good = sorted((tiny_raw / "files").rglob("*.jpg"))[0]
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    paths = [str(good), str(tmp_path / "empty.jpg"), str(tmp_path / "corrupt.jpg"), str(tmp_path / "nope.jpg"), None]
    res = create_encoder(_spec("vit_low")).encode(paths)
    assert res.present.tolist() == [True, False, False, False, False]
    assert res.missing == {"empty_file": 1, "unreadable_image": 1, "file_not_found": 1}
    assert res.emb.shape == (5, 16)


def test_tabular_parse_and_fit_on_train_only():
    d, bad = parse_serialised("age: 70; gender: F; lactate last: nan; heart rate mean: 90")
    assert d == {"age": 70.0, "gender=F": 1.0, "heart rate mean": 90.0} and bad == 1
    enc = create_encoder({"kind": "ehr_tabular"})
    res = enc.encode(["a: 1", "a: 3", "a: 1000; b: 2", None], ["train", "train", "test", "test"])
    assert res.fit_state["variables"] == ["a"]            # b never seen on train
    assert res.present.tolist() == [True, True, True, False]
    assert res.emb[2, 0] == 10                            # clipped at 10 train sd


def test_cache_roundtrip_and_stale_cache_refused(tiny_results):
    path = tiny_results / "tiny" / "embeddings" / "notes" / "bert_head.h5"
    attrs = read_attrs(path)
    emb, present = read_cache(path, expect={"encoder": "bert_head", "cohort_hash": attrs["cohort_hash"]})
    assert emb.shape[0] == present.shape[0] == attrs["n"] and present.sum() == attrs["n_present"]
    with pytest.raises(MedmixError, match="attribute 'spec_hash' is .* expected 'other'"):
        read_cache(path, expect={"spec_hash": "other"})


def test_embed_dedupes_identical_inputs_and_writes_atomically(tiny_results, tmp_path, monkeypatch):
    import polars as pl
    from medmix.data import cohort as C
    co = pl.read_parquet(tiny_results / "tiny" / "cohort.parquet")
    co = co.with_columns(pl.when(pl.col("split") == "test").then(pl.lit("same text")).otherwise(pl.col("notes")).alias("notes"))
    C.write(co, {"counts": {}}, tmp_path / "cohort.parquet")
    s = run_embed(tmp_path / "cohort.parquet", "notes", "bert_head", _spec("bert_head"), tmp_path / "e.h5", device="cpu")
    assert s["unique_inputs"] < s["inputs"]
    emb, present = read_cache(tmp_path / "e.h5")
    rows = (co["split"] == "test").to_numpy()
    assert np.allclose(emb[rows], emb[rows][0]) and present[rows].all()

    import medmix.encoders.cache as cache
    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(cache.h5py.File, "create_dataset", boom)
    from medmix.io import MedmixError
    with pytest.raises(MedmixError, match="f.h5: disk full while writing it"):
        run_embed(tmp_path / "cohort.parquet", "notes", "bert_head", _spec("bert_head"), tmp_path / "f.h5", device="cpu")
    assert not (tmp_path / "f.h5").exists() and not list(tmp_path.glob(".f.h5.*.tmp"))
    assert list(tmp_path.glob(".f.h5.ckpt-*/chunk-*.npz"))  # the encoded batches wait for the rerun


def test_image_workers_give_the_same_embeddings(tiny_raw):
    paths = [str(p) for p in sorted((tiny_raw / "files").rglob("*.jpg"))[:6]]
    enc = create_encoder(_spec("vit_crop"))
    np.testing.assert_array_equal(enc.encode(paths, workers=0).emb, enc.encode(paths, workers=2).emb)


def test_features_encoder_reads_every_format_pools_and_counts_bad_files(tmp_path):
    """Precomputed tile features (TRIDENT/CLAM .h5, .npy, .npz, .pt), pooled over the tiles; every
    file that cannot give a vector of the common width marks the input missing, counted by reason."""
    import h5py
    import torch
    rng = np.random.default_rng(0)
    tiles = {k: rng.normal(size=(n, 8)).astype(np.float32) for k, n in (("h5", 5), ("npy", 3), ("npz", 4), ("pt", 2))}
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["features"], f["coords"] = tiles["h5"][None], np.zeros((5, 2))      # [1, tiles, D] as CLAM writes
    np.save(tmp_path / "b.npy", tiles["npy"])
    np.savez(tmp_path / "c.npz", features=tiles["npz"])
    torch.save({"features": torch.from_numpy(tiles["pt"])}, tmp_path / "d.pt")
    good = [str(tmp_path / n) for n in ("a.h5", "b.npy", "c.npz", "d.pt")]
    one = rng.normal(size=8).astype(np.float32)                               # already one vector per slide
    np.save(tmp_path / "e.npy", one)
    bad = {"wrong_feature_dim": "w.npy", "unreadable_features": "t.h5", "empty_file": "z.pt",
           "file_not_found": "gone.npy", "no_tiles": "n.npy", "non_finite_features": "nan.npy"}
    np.save(tmp_path / "w.npy", rng.normal(size=(3, 5)))
    (tmp_path / "t.h5").write_bytes((tmp_path / "a.h5").read_bytes()[:300])   # truncated
    (tmp_path / "z.pt").touch()
    np.save(tmp_path / "n.npy", np.zeros((0, 8), np.float32))
    np.save(tmp_path / "nan.npy", np.full((2, 8), np.nan, np.float32))
    values = good + [str(tmp_path / "e.npy"), None] + [str(tmp_path / f) for f in bad.values()]
    want = {"mean": lambda a: a.mean(0), "max": lambda a: a.max(0),
            "mean_max": lambda a: np.concatenate([a.mean(0), a.max(0)])}
    for how, fn in want.items():
        res = create_encoder({"kind": "features", "pooling": how, "batch_size": 3}).encode(values)
        for i, k in enumerate(("h5", "npy", "npz", "pt")):
            np.testing.assert_allclose(res.emb[i], fn(tiles[k]), rtol=1e-6)
        np.testing.assert_allclose(res.emb[4], fn(one[None]), rtol=1e-6)
        assert res.present.tolist() == [True] * 5 + [False] * 7
        assert res.missing == dict(sorted({k: 1 for k in bad}.items()))
    with pytest.raises(MedmixError, match="encoders/tiles/pooling': a features encoder pools by auto, mean, max, mean_max, not 'cls'"):
        from medmix import config
        cfg = {**TINY_CONFIG, "encoders": {**TINY_CONFIG["encoders"], "tiles": {"kind": "features", "pooling": "cls"}}}
        config.validate(cfg)
