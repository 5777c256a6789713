"""Every encoder kind on tiny random models; inputs (16-bit, DICOM, NIfTI); sharding, resume, OOM halving,
offline errors. Offline, CPU, tiny fixtures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from medmix import config
from medmix.embed import merge_shards, run_embed
from medmix.encoders import create_encoder, list_encoders
from medmix.encoders.base import cached_file_sha256
from medmix.io import MedmixError

from conftest import REPO, TINY_BERT, TINY_CONFIG, TINY_VIT, slow_embed

TINY_QWEN = {"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 1, "intermediate_size": 64}
TINY_LLAMA = {**TINY_QWEN, "model_type": "llama"}
TINY_DINO = {"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "patch_size": 8}
TINY_HFVIT = {**TINY_DINO, "model_type": "vit"}

KINDS = {  # one tiny spec per registered kind (the schema fills the defaults)
    "hf_text": {"kind": "hf_text", "arch": TINY_BERT, "max_length": 32},
    "hf_llm": {"kind": "hf_llm", "arch": TINY_QWEN, "max_length": 32, "instruction": "Summarise: "},
    "hf_llm_llama": {"kind": "hf_llm", "arch": TINY_LLAMA, "max_length": 32, "pooling": "mean"},
    "hf_vision": {"kind": "hf_vision", "arch": TINY_DINO, "image_size": 16},
    "hf_vision_vit": {"kind": "hf_vision", "arch": TINY_HFVIT, "image_size": 16, "pooling": "mean"},
    "open_clip": {"kind": "open_clip", "arch": TINY_VIT, "image_size": 16},
    "open_clip_text": {"kind": "open_clip", "tower": "text", "arch": {"width": 32, "layers": 1, "heads": 2, "embed_dim": 16},
                       "max_length": 32},
    "tfidf_svd": {"kind": "tfidf_svd", "dim": 4},
    "ehr_tabular": {"kind": "ehr_tabular"},
    "features": {"kind": "features", "pooling": "mean_max"},
}
TEXTS = ["short note", "a much longer note about the chest " * 5, "   ", "mid length note here", "pleural effusion",
         "no acute findings", "small pneumothorax at the apex"]


def _full(spec: dict) -> dict:
    return config.validate({"targets": [], "datasets": {}, "encoders": {"x": spec}})["encoders"]["x"]


def _images(tmp_path, n=5) -> list[str]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (24, 20), dtype=np.uint8)).save(p)
        out.append(str(p))
    return out


def test_registry_matches_the_schema():
    enum = config.schema()["$defs"]["encoder"]["properties"]["kind"]["enum"]
    assert set(list_encoders()) == set(enum) == {k["kind"] for k in KINDS.values()}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_encodes_marks_missing_and_restores_order(name, tmp_path):
    spec = _full(KINDS[name])
    enc = create_encoder(spec)
    if enc.input == "image":
        values = _images(tmp_path) + [str(tmp_path / "nope.png"), None]
    elif enc.input == "features":
        values = _feature_files(tmp_path) + [str(tmp_path / "nope.npy"), None]
    elif spec["kind"] == "ehr_tabular":
        values = ["a: 1; b: 2", "a: 3", "a: 2; b: 0", "   ", "a: 5", "b: 1", None]
    else:
        values = TEXTS + [None]
    split = ["train"] * len(values)
    res = enc.encode(values, split)
    assert res.emb.shape[0] == len(values) and res.emb.shape[1] > 0 and res.emb.dtype == np.float32
    assert not res.present[-1] and not res.emb[-1].any()
    assert res.present.sum() == len(values) - 2          # None and one bad input (empty text / missing file)
    assert sum(res.missing.values()) == (0 if spec["kind"] == "ehr_tabular" else 1)  # tabular: blank = absent
    assert np.isfinite(res.emb).all()
    if not enc.fitted:                                   # a permutation gives the same rows, permuted
        perm = [4, 0, 1, 2, 3]
        again = create_encoder(spec).encode([values[i] for i in perm], split[:5])
        np.testing.assert_allclose(again.emb, res.emb[perm], atol=1e-5)


def _feature_files(tmp_path, n=5) -> list[str]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        np.save(tmp_path / f"f{i}.npy", rng.normal(size=(i + 1, 6)).astype(np.float32))
        out.append(str(tmp_path / f"f{i}.npy"))
    return out


def test_llm_pooling_and_instruction_change_the_embedding():
    base = _full(KINDS["hf_llm"])
    e_last = create_encoder(base).encode(TEXTS[:2]).emb
    e_mean = create_encoder({**base, "pooling": "mean"}).encode(TEXTS[:2]).emb
    e_noins = create_encoder({**base, "instruction": ""}).encode(TEXTS[:2]).emb
    assert not np.allclose(e_last, e_mean, atol=1e-4) and not np.allclose(e_last, e_noins, atol=1e-4)
    assert create_encoder(base).preprocessing_hash() != create_encoder({**base, "instruction": ""}).preprocessing_hash()
    # last-token pooling ignores padding: a text encoded alone equals it encoded in a padded batch
    alone = create_encoder(base).encode([TEXTS[0]]).emb
    np.testing.assert_allclose(alone[0], e_last[0], atol=1e-5)


def test_token_budget_bounds_each_batch_and_leaves_the_embeddings_unchanged():
    texts = [f"note {i} " + "word " * (i * 3) for i in range(12)]
    ref = create_encoder(_full({**KINDS["hf_text"], "batch_size": 64, "token_budget": 10**6}))
    enc = create_encoder(_full({**KINDS["hf_text"], "batch_size": 64, "token_budget": 64}))
    plan = enc.prepare(texts)
    lens = [max(len(plan.state[i]) for i in b) for b in plan.batches]
    assert len(plan.batches) > len(ref.prepare(texts).batches) == 1
    assert all(len(b) * n <= 64 or len(b) == 1 for b, n in zip(plan.batches, lens))   # rows x padded length
    assert sorted(np.concatenate(plan.batches).tolist()) == list(range(len(texts)))    # every text, once
    np.testing.assert_allclose(enc.encode(texts).emb, ref.encode(texts).emb, atol=1e-5)
    enc.device = "cuda:0"                                  # (model loaded above) a GPU takes `batch_size` rows
    assert [len(b) for b in enc.prepare(texts).batches] == [12]


def test_out_of_memory_halves_the_batch_and_retries():
    spec = _full({**KINDS["hf_text"], "batch_size": 8})
    ref = create_encoder(spec).encode(TEXTS * 2).emb
    enc = create_encoder(spec)
    real = enc.forward
    calls = []

    def faulty(rows):  # a device that holds at most 3 rows
        n = rows["input_ids"].shape[0]
        calls.append(n)
        if n > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(rows)

    enc.forward = faulty
    res = enc.encode(TEXTS * 2)
    assert res.batch_cap == 2 and max(calls[calls.index(2):]) <= 2    # 8 → 4 → 2, and it stays at 2
    np.testing.assert_allclose(res.emb, ref, atol=1e-5)

    enc.forward = lambda rows: (_ for _ in ()).throw(torch.OutOfMemoryError("out of memory"))
    with pytest.raises(MedmixError, match="out of memory even with one row"):
        enc.encode(TEXTS[:2])


# ---------------------------------------------------------------------------------------------- inputs


def _dicom(path: Path, pixels: np.ndarray, z: float | None = None, mono1: bool = False) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
    if z is not None:
        ds.ImagePositionPatient = [0, 0, z]
        ds.InstanceNumber = int(z)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_image_inputs_16bit_dicom_nifti_series_and_bad_files(tmp_path):
    import nibabel as nib
    rng = np.random.default_rng(1)
    img = rng.integers(0, 4096, (24, 24)).astype(np.uint16)
    vol = rng.integers(0, 4096, (3, 24, 24)).astype(np.uint16)                # (S, H, W)
    Image.fromarray(img).save(tmp_path / "a16.png")                            # 16-bit grayscale PNG
    from medmix.encoders.image import _to_uint8
    Image.fromarray(_to_uint8(img)).save(tmp_path / "a8.png")                 # its min-max 8-bit rescaling
    _dicom(tmp_path / "a.dcm", img)
    _dicom(tmp_path / "a_inv.dcm", img.max() - img, mono1=True)               # MONOCHROME1: inverted back
    nib.save(nib.Nifti1Image(np.moveaxis(vol, 0, -1).astype(np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    (tmp_path / "series").mkdir()
    for s in (2, 0, 1):                                                        # written out of order
        _dicom(tmp_path / "series" / f"slice{s}.dcm", vol[s], z=float(s))
    _dicom(tmp_path / "mf.dcm", vol)                                           # multi-frame
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a volume")
    (tmp_path / "empty_series").mkdir()
    paths = [str(tmp_path / n) for n in ("a16.png", "a8.png", "a.dcm", "a_inv.dcm", "v.nii.gz", "series", "mf.dcm",
                                         "bad.dcm", "bad.nii.gz", "empty_series", "missing.dcm")]
    res = create_encoder(_full({**KINDS["open_clip"], "image_size": 24})).encode(paths)
    e = res.emb
    assert res.present.tolist() == [True] * 7 + [False] * 4
    assert res.missing == {"file_not_found": 1, "unreadable_dicom": 2, "unreadable_volume": 1}
    np.testing.assert_allclose(e[0], e[1], atol=1e-5)   # 16-bit PNG == its 8-bit rescaling
    np.testing.assert_allclose(e[0], e[2], atol=1e-5)   # DICOM == PNG of the same pixels
    np.testing.assert_allclose(e[2], e[3], atol=1e-5)   # MONOCHROME1 handled
    np.testing.assert_allclose(e[4], e[5], atol=1e-5)   # NIfTI volume == DICOM series (sorted by position)
    np.testing.assert_allclose(e[4], e[6], atol=1e-5)   # == multi-frame DICOM
    one = create_encoder(_full({**KINDS["open_clip"], "image_size": 24, "volume_slices": 1})).encode([paths[4]]).emb
    assert not np.allclose(one[0], e[4], atol=1e-4)     # pooling over slices, not one slice


def test_grayscale_images_keep_one_band_and_give_exactly_the_rgb_numbers(tmp_path):
    from medmix.encoders.image import _MEAN, _STD, _Images, load_slices
    rng = np.random.default_rng(3)
    gray = Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8))        # non-square: the crop matters
    gray.save(tmp_path / "g.png")
    gray.save(tmp_path / "g.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    Image.fromarray(rng.integers(0, 256, (30, 41, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    pre = _Images([], 24, 0.9, _MEAN, _STD, 16)._pre
    for name, mode in (("g.png", "L"), ("g.jpg", "L"), ("c.png", "RGB"), ("rgba.png", "RGB")):
        (img,) = load_slices(str(tmp_path / name))
        assert img.mode == mode, name
        x = pre(img)
        assert x.shape == (3, 24, 24)
        assert torch.equal(x, pre(Image.open(tmp_path / name).convert("RGB"))), name   # bit-identical to RGB first


# ---------------------------------------------------------------------------------------------- embed stage


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, tiny_results):
    """The tiny cohort with duplicated notes (dedupe) and a multi-image cxr column."""
    import polars as pl
    from medmix.data import cohort as C
    d = tmp_path_factory.mktemp("co")
    co = pl.read_parquet(tiny_results / "tiny" / "cohort.parquet")
    co = co.with_columns(pl.when(pl.col("split") == "test").then(pl.lit("same text")).otherwise(pl.col("notes")).alias("notes"))
    C.write(co, {"counts": {}}, d / "cohort.parquet")
    return d / "cohort.parquet"


def _h5(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f}, {k: f.attrs[k] for k in f.attrs}


@pytest.mark.parametrize("modality,slug", [("notes", "bert_tail"), ("cxr", "vit_low")])
def test_sharded_merge_equals_unsharded_run(cohort, tmp_path, modality, slug):
    spec = {**config.validate(TINY_CONFIG)["encoders"][slug], "batch_size": 8}
    full = run_embed(cohort, modality, slug, spec, tmp_path / "full.h5", device="cpu", progress=False)
    shards = [tmp_path / f"s{i}.h5" for i in range(3)]
    for i, p in enumerate(shards):
        s = run_embed(cohort, modality, slug, spec, p, device="cpu", shard=(i, 3), progress=False)
        assert s["batches_this_job"] < full["batches"]
    merged = merge_shards(cohort, modality, slug, spec, shards[::-1], tmp_path / "merged.h5")
    assert merged["present"] == full["present"] and merged["missing_by_reason"] == full["missing_by_reason"]
    a, aa = _h5(tmp_path / "full.h5")
    b, ba = _h5(tmp_path / "merged.h5")
    assert a["ids"].tolist() == b["ids"].tolist()
    np.testing.assert_array_equal(a["emb"], b["emb"])           # bit-identical
    np.testing.assert_array_equal(a["present"], b["present"])
    assert aa == ba
    with pytest.raises(MedmixError, match=r"shards \[1\] of 3 are missing"):
        merge_shards(cohort, modality, slug, spec, [shards[0], shards[2]], tmp_path / "m2.h5")
    with pytest.raises(MedmixError, match="attribute 'spec_hash'"):
        merge_shards(cohort, modality, slug, {**spec, "seed": 99}, shards, tmp_path / "m3.h5")


def test_killed_job_resumes_from_checkpoint_and_equals_uninterrupted_run(cohort, tmp_path):
    spec = {**config.validate(TINY_CONFIG)["encoders"]["bert_tail"], "batch_size": 4}
    ref = run_embed(cohort, "notes", "bert_tail", spec, tmp_path / "ref.h5", device="cpu", progress=False)
    out = tmp_path / "out.h5"
    proc = slow_embed(["embed", "--cohort", cohort, "--modality", "notes", "--encoder", "bert_tail", "--out", out,
                       "--job", json.dumps({"spec": spec}), "--checkpoint-every", "1", "--quiet"],
                      gate=tmp_path / "never-opened", hold_after=5)          # held after 5 batches until killed
    deadline = time.time() + 60
    chunks: list = []
    while time.time() < deadline and len(chunks) < 4 and proc.poll() is None:
        time.sleep(0.1)
        chunks = list(tmp_path.glob(".out.h5.ckpt-*/chunk-*.npz"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(chunks) >= 4, "the job finished or failed before it could be killed: " + proc.stdout.read()[-2000:]
    assert not out.exists()                                         # nothing that looks complete
    again = run_embed(cohort, "notes", "bert_tail", spec, out, device="cpu", progress=False)
    assert 4 <= again["resumed_batches"] < ref["batches"]
    a, aa = _h5(tmp_path / "ref.h5")
    b, ba = _h5(out)
    np.testing.assert_array_equal(a["emb"], b["emb"])
    assert a["ids"].tolist() == b["ids"].tolist() and aa == ba
    assert not list(tmp_path.glob(".out.h5.ckpt-*"))                # checkpoint removed once the cache is in place


def test_tfidf_svd_fits_on_train_only_and_stores_its_model(cohort, tmp_path):
    import polars as pl
    from medmix.embed import fit_path
    from medmix.encoders.cache import read_attrs, read_cache
    from medmix.encoders.tfidf import TfidfSvd
    spec = _full({"kind": "tfidf_svd", "dim": 8})
    run_embed(cohort, "notes", "tfidf", spec, tmp_path / "t.h5", device="cpu")
    emb, present = read_cache(tmp_path / "t.h5")
    co = pl.read_parquet(cohort)
    assert read_attrs(tmp_path / "t.h5")["fit_state"] and emb.shape[1] == 8
    model = TfidfSvd.load(fit_path(tmp_path / "t.h5"))
    rows = np.flatnonzero(present)
    np.testing.assert_allclose(model.transform([co["notes"][int(i)] for i in rows]), emb[rows], atol=1e-5)
    # changing a test text does not change the fit: train rows keep their embeddings
    from medmix.data import cohort as C
    co2 = co.with_columns(pl.when(pl.col("split") == "test").then(pl.lit("zebra unicorn")).otherwise(pl.col("notes")).alias("notes"))
    C.write(co2, {"counts": {}}, tmp_path / "c2.parquet")
    run_embed(tmp_path / "c2.parquet", "notes", "tfidf", spec, tmp_path / "t2.h5", device="cpu")
    emb2, _ = read_cache(tmp_path / "t2.h5")
    train = (co["split"] == "train").to_numpy()
    np.testing.assert_allclose(emb[train], emb2[train], atol=1e-5)
    with pytest.raises(MedmixError, match="cannot be sharded"):
        run_embed(cohort, "notes", "tfidf", spec, tmp_path / "t3.h5", device="cpu", shard=(0, 2))


def test_uncached_hub_model_gives_one_clear_error(cohort, tmp_path):
    spec = json.dumps({"spec": {"kind": "hf_llm", "model": "medmix-test/no-such-model-7b"}})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    p = subprocess.run([sys.executable, "-m", "medmix", "embed", "--cohort", str(cohort), "--modality", "notes",
                        "--encoder", "teacher", "--out", str(tmp_path / "x.h5"), "--job", spec],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert "medmix-test/no-such-model-7b" in p.stderr and "HF_HOME" in p.stderr and "local directory" in p.stderr


def test_run_keys_do_not_change_the_cache_identity(tiny_config):
    a = config.validate(tiny_config)
    tiny_config["encoders"]["bert_head"].update(shards=4, workers=8, resources={"mem_mb": 64000, "gpu": 1})
    b = config.validate(tiny_config)
    assert config.embed_job(a, "tiny", "notes", "bert_head") == config.embed_job(b, "tiny", "notes", "bert_head")
    assert config.train_job(a, "tiny", "medmix") == config.train_job(b, "tiny", "medmix")
    tiny_config["encoders"]["tab"]["shards"] = 2
    with pytest.raises(MedmixError, match="encoders/tab/shards"):
        config.validate(tiny_config)


def test_weights_hash_is_remembered_by_path_size_and_mtime(tmp_path, monkeypatch):
    import medmix.encoders.base as base
    monkeypatch.setenv("MEDMIX_CACHE_DIR", str(tmp_path / "cache"))
    w = tmp_path / "model.safetensors"
    w.write_bytes(b"x" * 1000)
    h = cached_file_sha256(w)
    monkeypatch.setattr(base, "file_sha256", lambda p: pytest.fail("re-hashed an unchanged file"))
    assert cached_file_sha256(w) == h
    monkeypatch.undo()
    monkeypatch.setenv("MEDMIX_CACHE_DIR", str(tmp_path / "cache"))
    w.write_bytes(b"y" * 1000)
    os.utime(w, ns=(1, 1))
    assert cached_file_sha256(w) != h


def test_fitted_kinds_list_exactly_the_fitted_encoders():
    """config.FITTED_KINDS (torch-free, read by the Snakefile) names exactly the kinds fitted on train."""
    from medmix.encoders.base import _REGISTRY
    assert set(config.FITTED_KINDS) == {k for k, cls in _REGISTRY.items() if getattr(cls, "fitted", False)}
