"""Missingness mechanisms (medmix.masks.ampute): MCAR, MAR, MNAR and block-wise, as a cohort → masks API."""

import numpy as np
import polars as pl
import pytest

from medmix.io import MedmixError
from medmix.masks import ampute, cohort_availability, realised_rate

MODS = ["cxr", "ehr", "notes"]


def _cohort(n=4000, seed=0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.normal(65, 12, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(age - 65) / 8))).astype(int)   # older patients die more
    ehr = ["x"] * n
    notes = np.where(rng.random(n) < 0.8, "note", None)
    cxr = np.where(rng.random(n) < 0.6, "img", None)
    return pl.DataFrame({"sample_id": [str(i) for i in range(n)], "group_age": age, "y_ihm": y,
                         "ehr": ehr, "notes": notes.tolist(), "cxr": cxr.tolist()})


@pytest.mark.parametrize("spec", [{"kind": "mcar"}, {"kind": "mar"}, {"kind": "mar", "driver": "group_age"},
                                  {"kind": "mnar", "driver": "y_ihm", "direction": "down"}])
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_mechanisms_reach_the_asked_average_rate_and_keep_one_input(spec, rate):
    co = _cohort()
    keep = ampute(co, MODS, spec, rate, seed=3)
    avail = cohort_availability(co, MODS)
    assert keep[~avail].all() and (keep & avail).any(1).all()       # only available inputs go; one stays
    got = realised_rate(co, MODS, keep)
    mcar = realised_rate(co, MODS, ampute(co, MODS, {"kind": "mcar"}, rate, seed=3))
    assert abs(got - mcar) < 0.002, (spec, rate, got, mcar)        # every mechanism drops as much as MCAR
    # MCAR drops each input with probability `rate`; the keep-one rule draws some back (more at high rates)
    assert rate * 0.55 <= mcar <= rate + 0.02, (rate, mcar)
    np.testing.assert_array_equal(keep, ampute(co, MODS, spec, rate, seed=3))   # seeded: same for every method
    assert not np.array_equal(keep, ampute(co, MODS, spec, rate, seed=4))


def test_mar_and_mnar_follow_their_driver_and_mcar_does_not():
    """A planted dependence: with driver age (MAR) the old lose more; with the outcome (MNAR, down) the
    survivors lose more; MCAR's drop rate is the same in both groups."""
    co = _cohort()
    avail = cohort_availability(co, MODS)
    old = (co["group_age"] > 65).to_numpy()
    died = co["y_ihm"].to_numpy() == 1

    def rate_in(keep, rows):
        return (avail[rows] & ~keep[rows]).sum() / avail[rows].sum()

    mar = ampute(co, MODS, {"kind": "mar", "driver": "group_age"}, 0.3, seed=0)
    assert rate_in(mar, old) > 2 * rate_in(mar, ~old)
    mnar = ampute(co, MODS, {"kind": "mnar", "driver": "y_ihm", "direction": "down"}, 0.3, seed=0)
    assert rate_in(mnar, ~died) > 1.5 * rate_in(mnar, died)
    mcar = ampute(co, MODS, {"kind": "mcar"}, 0.3, seed=0)
    assert abs(rate_in(mcar, old) - rate_in(mcar, ~old)) < 0.03
    # default MAR driver: the number of other modalities (observed): the fully documented lose more
    full = avail.all(1)
    mar0 = ampute(co, MODS, {"kind": "mar"}, 0.3, seed=0)
    assert rate_in(mar0, full) > rate_in(mar0, ~full)


def test_block_drops_a_subset_together_and_never_everything():
    co = _cohort()
    avail = cohort_availability(co, MODS)
    keep = ampute(co, MODS, {"kind": "block", "modalities": ["notes", "cxr"]}, 0.5, seed=1)
    lost = avail & ~keep
    assert not lost[:, MODS.index("ehr")].any()                          # outside the block: untouched
    hit = lost.any(1)
    assert 0.45 < hit.mean() < 0.55
    both = avail[:, MODS.index("notes")] & avail[:, MODS.index("cxr")]
    assert (lost[hit & both][:, [0, 2]]).all()                           # together: both go when both exist
    with pytest.raises(MedmixError, match="proper subset"):
        ampute(co, MODS, {"kind": "block", "modalities": MODS}, 0.5)


def test_bad_specs_name_the_problem():
    co = _cohort(100)
    with pytest.raises(MedmixError, match="mnar needs a `driver`"):
        ampute(co, MODS, {"kind": "mnar"}, 0.3)
    with pytest.raises(MedmixError, match="driver column 'severity' is not in the cohort"):
        ampute(co, MODS, {"kind": "mar", "driver": "severity"}, 0.3)
    with pytest.raises(MedmixError, match="kind must be one of"):
        ampute(co, MODS, {"kind": "weird"}, 0.3)
    with pytest.raises(MedmixError, match="not inputs of this dataset"):
        ampute(co, MODS, {"kind": "mcar", "modalities": ["ct"]}, 0.3)


def test_a_train_time_mechanism_drops_training_inputs_only_as_mcar_would_and_follows_its_driver():
    from medmix.masks import TrainDrop, train_keep
    co = _cohort(n=3000)
    split = np.where(np.arange(3000) % 5 == 0, "test", np.where(np.arange(3000) % 5 == 1, "val", "train"))
    co = co.with_columns(pl.Series("split", split))
    mods = {m: {} for m in MODS}
    y = co["y_ihm"].to_numpy().astype(float)
    spec = {"name": "mnar", "kind": "mnar", "driver": "outcome", "direction": "down"}
    drop = TrainDrop({"modality": "mnar", "rate": 0.5, "seed": 0, "mechanism": spec}, mods, co, seed=1, outcome=y)
    avail = cohort_availability(co, MODS)
    lost = avail & ~drop.keep
    train = split == "train"
    assert not lost[~train].any()                                       # validation and test untouched
    mcar = train_keep({"modality": "multi", "rate": 0.5, "seed": 0}, avail, MODS, train, seed=1)
    assert abs(int(lost.sum()) - int((avail & ~mcar).sum())) <= 0.01 * avail[train].sum()   # MCAR's missingness
    per_sample = lost.sum(1)
    assert per_sample[train & (y == 0)].mean() > 1.3 * per_sample[train & (y == 1)].mean()  # survivors lose more
    again = TrainDrop({"modality": "mnar", "rate": 0.5, "seed": 0, "mechanism": spec}, mods, co, seed=1, outcome=y)
    assert np.array_equal(again.keep, drop.keep) and drop.summary["mask_hash"] == again.summary["mask_hash"]


def test_train_mechanisms_must_name_a_usable_mechanism():
    from medmix import config
    from conftest import TINY_CONFIG
    base = {**TINY_CONFIG, "robustness": {"mechanisms": [{"name": "mnar", "kind": "mnar", "driver": "outcome"},
                                                         {"name": "blk", "kind": "block"},
                                                         {"name": "notes", "kind": "mar"}]}}
    for names, msg in ((["mar"], "not a name of robustness.mechanisms"), (["blk"], "needs its `modalities`"),
                       (["notes"], "also a modality name")):
        cfg = {**base, "robustness": {**base["robustness"], "train_mechanisms": names}}
        with pytest.raises(MedmixError, match=msg):
            config.validate(cfg)
    config.validate({**base, "robustness": {**base["robustness"], "train_mechanisms": ["mnar"]}})
