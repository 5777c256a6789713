"""Row: a cache written by another model revision or preprocessing → refused, naming the attribute
that differs; the documented override MEDMIX_ACCEPT_STALE=<attribute> uses it anyway (logged)."""

import logging

import pytest

from medmix.embed import run_embed
from medmix.encoders import create_encoder
from medmix.encoders.cache import read_cache, read_ids
from medmix.io import MedmixError

from relhelp import BERT, full_spec, write_cohort


def _expect(spec):
    enc = create_encoder(spec, "cpu")
    return {"weights_hash": enc.weights_hash(), "preprocessing_hash": enc.preprocessing_hash()}


def test_stale_cache_is_refused_naming_the_attribute_and_can_be_overridden(tmp_path, monkeypatch, caplog):
    cohort = write_cohort(tmp_path / "cohort.parquet", "notes", ["a note", "another note", "third", "fourth"])
    spec = full_spec(BERT)
    out = tmp_path / "bert.h5"
    run_embed(cohort, "notes", "bert", spec, out, device="cpu", progress=False)
    ids = read_ids(out)
    read_cache(out, expect=_expect(spec), ids=ids)                  # the current model: accepted
    other_weights = full_spec({**BERT, "seed": 7})                  # another model (revision / weights)
    other_prep = full_spec({**BERT, "max_length": 16})              # other preprocessing
    with pytest.raises(MedmixError, match=r"stale embedding cache: attribute 'weights_hash'.*MEDMIX_ACCEPT_STALE"):
        read_cache(out, expect=_expect(other_weights), ids=ids)
    with pytest.raises(MedmixError, match="stale embedding cache: attribute 'preprocessing_hash'"):
        read_cache(out, expect={"preprocessing_hash": _expect(other_prep)["preprocessing_hash"]}, ids=ids)
    # the override: exactly the named attribute, with a warning; anything else is still refused
    monkeypatch.setenv("MEDMIX_ACCEPT_STALE", "weights_hash")
    with caplog.at_level(logging.WARNING, logger="medmix.cache"):
        emb, present = read_cache(out, expect={"weights_hash": _expect(other_weights)["weights_hash"]}, ids=ids)
    assert emb.shape[0] == 4 and "used anyway (MEDMIX_ACCEPT_STALE)" in caplog.text
    with pytest.raises(MedmixError, match="attribute 'preprocessing_hash'"):
        read_cache(out, expect=_expect(other_prep), ids=ids)
    with pytest.raises(MedmixError, match="attribute 'ids'"):       # rows that do not line up: never overridable
        read_cache(out, ids=ids[::-1])
