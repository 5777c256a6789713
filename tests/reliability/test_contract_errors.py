"""Rows: duplicate sample_id, label outside its domain, unknown split name → an error naming the file,
the row and the field, and nothing written; config unknown key, wrong type, unknown encoder or method
→ a schema error naming the key path."""

import pytest
import yaml

from medmix import cli, config
from medmix.io import MedmixError

from relhelp import leftovers

HEAD = "sample_id,patient_id,split,dx,note"
GOOD = ["s1,p1,train,1,chest pain", "s2,p2,val,0,cough", "s3,p3,test,1,fever", "s4,p4,train,0,dyspnoea"]


@pytest.mark.parametrize("row,field,needle", [
    ("s2,p9,train,1,again", "sample_id", "duplicates 's2'"),
    ("s5,p5,train,7,odd label", "dx", "7"),
    ("s5,p5,validation,1,unknown split", "split", "validation"),
])
def test_bad_manifest_row_names_file_row_and_field_and_writes_nothing(tmp_path, capsys, row, field, needle):
    (tmp_path / "manifest.csv").write_text("\n".join([HEAD, *GOOD, row]) + "\n")
    cfg = {"targets": [], "datasets": {"m": {
        "kind": "manifest", "root": str(tmp_path), "tasks": {"dx": {"type": "binary", "columns": ["dx"]}},
        "inputs": {"note": "text"}, "modalities": {"note": {"experts": ["t"]}}}},
           "encoders": {"t": {"kind": "tfidf_svd"}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "results" / "m" / "cohort.parquet"
    rc = cli.main(["prepare", "m", "--config", str(tmp_path / "config.yaml"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    msg = err.strip().splitlines()[-1]
    assert "manifest.csv" in msg and "row 5" in msg and f"'{field}'" in msg and needle in msg, msg
    written = [p for p in (tmp_path / "results").rglob("*") if p.is_file()] if (tmp_path / "results").exists() else []
    assert written == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize("mutate,path", [
    (lambda c: c.update(tain={}), "<top level>"),                                       # unknown key
    (lambda c: c["train"].update(max_epochs="ten"), "train/max_epochs"),                # wrong type
    (lambda c: c["encoders"]["bert_head"].update(pooling_mode="cls"), "encoders/bert_head"),
    (lambda c: c["datasets"]["tiny"]["modalities"]["notes"]["experts"].append("bert_hed"),
     "datasets/tiny/modalities/notes/experts"),                                       # unknown encoder
    (lambda c: c["methods"].append("medmixx"), "methods/5"),                          # unknown method
    (lambda c: c["encoders"].update(x={"kind": "hf_txt"}), "encoders/x/kind"),        # unknown encoder kind
])
def test_config_errors_name_the_key_path(tiny_config, tmp_path, capsys, mutate, path):
    mutate(tiny_config)
    with pytest.raises(MedmixError, match=f"invalid config at '{path}'"):
        config.validate(tiny_config)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config))   # the same through a verb: one line, no traceback
    rc = cli.main(["prepare", "tiny", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "co.parquet")])
    err = capsys.readouterr().err
    assert rc == 1 and f"c.yaml: invalid config at '{path}'" in err and "Traceback" not in err
