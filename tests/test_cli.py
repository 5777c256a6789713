import json

import pytest

from medmix.cli import main

from conftest import MIMIC_DEMO


def test_missing_root_is_a_clear_error(tmp_path, capsys):
    rc = main(["prepare", "mimic", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "c.parquet")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "nope/hosp/patients.csv.gz" in err and "not found" in err
    assert not (tmp_path / "c.parquet").exists()


def test_bad_config_names_the_key(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("datasets: {}\nencoders: {}\ntargets: []\nseeds: [zero]\n")
    rc = main(["train", "--dataset", "x", "--method", "medmix", "--seed", "0", "--out", str(tmp_path),
               "--config", str(tmp_path / "c.yaml")])
    assert rc == 1 and "seeds/0" in capsys.readouterr().err


@pytest.mark.skipif(not MIMIC_DEMO.exists(), reason="real MIMIC-IV demo not available")
def test_prepare_real_mimic_iv_demo_without_config(tmp_path, capsys):
    assert main(["prepare", "mimic", "--root", str(MIMIC_DEMO), "--out", str(tmp_path / "cohort.parquet")]) == 0
    report = json.loads((tmp_path / "cohort.json").read_text())
    assert report["counts"]["samples"] > 30 and report["missing"]["cxr"] == {"cxr_source_absent": report["counts"]["samples"]}
