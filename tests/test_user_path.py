"""The real user's path through the DAG: the paper's encoder pool rehearsed offline (tiny stand-ins
under the real repository ids in a temporary Hugging Face cache, tests/hf_standins.py, loaded by the
same code as real weights) and MMIST-ccRCC on all five of its modalities (the synthetic fixture),
both as the shipped config.yaml describes them, in one Snakemake run."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from conftest import NO_SLURM, REPO
from hf_standins import BIOCLINICALBERT, QWEN2, commit_of, write_paper_pool

PAPER_POOL = yaml.safe_load((REPO / "configs" / "paper_encoders.yaml").read_text())
ENCODERS = yaml.safe_load((REPO / "config.yaml").read_text())["encoders"]


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    home = tmp_path_factory.mktemp("hf_home")
    return home, write_paper_pool(home)


def _encode(spec: dict, texts: list[str]) -> np.ndarray:
    from medmix.encoders import create_encoder
    res = create_encoder(spec).encode(texts)
    assert res.present.all()
    return res.emb


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("pad_token", [True, False])
def test_last_token_pooling_ignores_batch_mates(hf_home, tmp_path, padding_side, pad_token):
    """A decoder LLM's last-token embedding of a text is the same alone and padded beside a longer
    text, whatever padding side its tokenizer declares and whether it has a pad token at all."""
    model = tmp_path / "qwen"
    shutil.copytree(hf_home[1][QWEN2], model)       # the snapshot's symlinks resolved into a local directory
    tc = json.loads((model / "tokenizer_config.json").read_text())
    tc["padding_side"] = padding_side
    if not pad_token:
        tc.pop("pad_token", None)
    (model / "tokenizer_config.json").write_text(json.dumps(tc))
    spec = {**ENCODERS["qwen2_7b"], "model": str(model), "batch_size": 2}
    short = "no acute cardiopulmonary abnormality"
    alone = _encode(spec, [short])
    mates = _encode(spec, [short, "the patient was admitted to the icu with fever, cough and chest pain " * 6])
    np.testing.assert_allclose(mates[0], alone[0], atol=1e-5)


def test_a_config_without_model_type_loads_its_weights(hf_home):
    """Bio_ClinicalBERT's config.json has no `model_type` (transformers 5 no longer infers it from
    the name): it is read as BERT, and the embedding is the stand-in's own weights, not a random init."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer
    snap = hf_home[1][BIOCLINICALBERT]
    assert "model_type" not in json.loads((snap / "config.json").read_text())
    text = "chest pain and fever"
    got = _encode({**ENCODERS["bioclinicalbert"], "model": str(snap)}, [text])[0]
    ref_model = BertModel.from_pretrained(snap, config=BertConfig.from_json_file(snap / "config.json")).eval()
    tok = BertTokenizer(str(snap / "vocab.txt"))(text, return_tensors="pt")
    with torch.inference_mode():
        ref = ref_model(**tok).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.fixture(scope="module")
def user_dag(hf_home, tmp_path_factory) -> Path:
    """One Snakemake run of the shipped config.yaml + configs/paper_encoders.yaml, HF_HUB_OFFLINE=1, to
    results/demo/metrics.json (the paper pool) and results/ccrcc/metrics.json (synthetic ccRCC)."""
    import subprocess
    home, _ = hf_home
    wd = tmp_path_factory.mktemp("user_dag")
    shutil.copy(REPO / "config.yaml", wd / "config.yaml")
    pool = {s for spec in PAPER_POOL["datasets"]["demo"]["modalities"].values()
            for s in spec["experts"] + spec.get("teachers", [])}
    small = {   # small: one seed, short training, one shard per encoder; the encoders and modalities as shipped
        "targets": ["demo", "ccrcc"],
        "datasets": {"demo": {"synth": {"n": 200, "seed": 0}}, "ccrcc": {"synth": {"n": 100, "seed": 0}}},
        "methods": ["medmix", "teacher_deployed"], "seeds": [0],
        "train": {"max_epochs": 4, "patience": 2, "bootstrap": 20},
        "tuning": {"trials": 2, "seeds": [0]},   # the shipped preset's tune stage, on a small budget
        "encoders": {s: {"shards": 1} for s in pool if ENCODERS[s].get("shards")},
    }
    (wd / "small.yaml").write_text(yaml.safe_dump(small))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", **NO_SLURM}
    p = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd),
                        "--cores", "2", "results/demo/metrics.json", "results/ccrcc/metrics.json",
                        "--configfile", "config.yaml", str(REPO / "configs" / "paper_encoders.yaml"), "small.yaml"],
                       capture_output=True, text=True, env=env, cwd=wd)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    return wd


@pytest.mark.integration
def test_the_paper_pool_runs_the_demo_through_the_dag_offline(hf_home, user_dag):
    """Every encoder of the pool resolves its real id from the cache and the DAG ends in metrics.json."""
    _, snaps = hf_home
    metrics = json.loads((user_dag / "results/demo/metrics.json").read_text())
    assert set(metrics["methods"]) == {"medmix", "teacher_deployed"}
    seen = set()
    for m, spec in PAPER_POOL["datasets"]["demo"]["modalities"].items():
        for slug in spec["experts"] + spec["teachers"]:
            with h5py.File(user_dag / f"results/demo/embeddings/{m}/{slug}.h5") as f:
                model = ENCODERS[slug].get("model", "")
                assert f.attrs["model_name"] == model or not model
                repo = model.removeprefix("hf-hub:")
                if repo in snaps:   # pinned to the cached snapshot's commit
                    assert f.attrs["weights_hash"] == f"hub-commit-{commit_of(repo)}"
                    seen.add(repo)
                assert f.attrs["n_present"] > 0
    assert seen == set(snaps) - {"microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"}
    log = (user_dag / "results/demo/logs/embed/notes/bioclinicalbert.log").read_text()
    assert "no `model_type`; read as 'bert'" in log


@pytest.mark.integration
def test_ccrcc_trains_on_all_five_modalities(user_dag):
    """The shipped ccrcc block on the synthetic fixture: clinical, genomics, CT and MRI volumes (slice-wise
    through image towers) and slide tile features (.h5, .npy, .pt) all reach the model."""
    five = ["clinical", "ct", "genomics", "mri", "wsi"]
    counts = json.loads((user_dag / "results/ccrcc/cohort.json").read_text())["counts"]["modality_available"]
    run = json.loads((user_dag / "results/ccrcc/runs/medmix/seed0/metrics.json").read_text())
    assert sorted(run["modalities"]) == five
    for m in five:
        for slug in yaml.safe_load((REPO / "config.yaml").read_text())["datasets"]["ccrcc"]["modalities"][m]["experts"]:
            with h5py.File(user_dag / f"results/ccrcc/embeddings/{m}/{slug}.h5") as f:
                # every file the cohort lists was read (the MRI series are valid DICOM, the slides in 3 formats)
                assert f.attrs["n_present"] == counts[m] > 0 and json.loads(f.attrs["missing"]) == {}
