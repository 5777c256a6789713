"""Row: NaN / inf / absurd values in EHR numbers → dropped or clipped by documented rules, counted.

Loader (MIMIC-IV/-III): non-numeric and non-finite values dropped (`ehr_values_non_numeric`), values
outside each variable's plausibility bounds dropped (`ehr_values_out_of_bounds`). Encoder
(`ehr_tabular`): NaN/inf and values beyond float32 range treated as absent (`non_finite_values`),
standardised values clipped at ±10 train sd (`clipped_values`)."""

import json

import numpy as np
import polars as pl

from medmix.data.common import summarise_events as _summarise
from medmix.data.variables import VITALS
from medmix.embed import run_embed

from relhelp import h5, write_cohort


def test_loader_drops_and_counts_non_finite_and_implausible_values():
    ev = pl.DataFrame({"sample_id": ["a"] * 6, "itemid": [220045] * 6, "t": list(range(6)),
                       "valuenum": ["80", "NaN", "inf", "abc", "100000", "90"]})
    counts: dict = {}
    out = _summarise(ev, VITALS, ("mean", "max"), counts)
    assert counts == {"ehr_values_non_numeric": 3, "ehr_values_out_of_bounds": 1}
    assert out.row(0, named=True)["max"] == 90 and out.row(0, named=True)["mean"] == 85


def test_tabular_encoder_treats_non_finite_as_absent_clips_absurd_values_and_counts_both(tmp_path):
    base = [f"hr: {70 + i % 7}; lactate: {1 + (i % 5) / 10}" for i in range(40)]
    bad = list(base)
    bad[0] = "hr: nan; lactate: 1.2"          # train rows (splits cycle train, train, val, test)
    bad[1] = "hr: inf; lactate: 1.3"
    bad[4] = "hr: 72; lactate: 1e300"         # 1e300 overflows float32: would poison the train mean
    bad[2] = "hr: 1e6; lactate: 1.1"          # val row: absurd but finite → clipped at 10 sd
    bad[5] = "hr: nan; lactate: -inf"         # nothing usable left: the sample's EHR is missing
    absent = list(bad)                        # the same cohort with the bad values left out
    absent[0], absent[1], absent[4], absent[5] = "lactate: 1.2", "lactate: 1.3", "hr: 72", None
    spec = {"kind": "ehr_tabular"}
    s_clean = run_embed(write_cohort(tmp_path / "a.parquet", "ehr", absent), "ehr", "tab", spec, tmp_path / "a.h5",
                        device="cpu")
    s_bad = run_embed(write_cohort(tmp_path / "b.parquet", "ehr", bad), "ehr", "tab", spec, tmp_path / "b.h5",
                      device="cpu")
    assert s_clean["missing_by_reason"] == {"clipped_values": 1}
    assert s_bad["missing_by_reason"] == {"non_finite_values": 5, "clipped_values": 1}
    a, _ = h5(tmp_path / "a.h5")
    b, attrs = h5(tmp_path / "b.h5")
    assert json.loads(attrs["missing"]) == s_bad["missing_by_reason"]
    assert np.isfinite(b["emb"]).all() and np.abs(b["emb"]).max() <= 10
    # a non-finite value is exactly an absent one: same train statistics, same embeddings
    np.testing.assert_array_equal(b["emb"], a["emb"])
    np.testing.assert_array_equal(b["present"], a["present"])
    assert b["emb"][2, 0] == 10.0                                  # the absurd hr, clipped
    # columns: hr, lactate, then their missing indicators
    assert b["emb"][0, 2] == b["emb"][1, 2] == b["emb"][4, 3] == 1.0 and b["emb"][4, 2] == 0.0
    assert b["present"].tolist()[:6] == [True, True, True, True, True, False]
