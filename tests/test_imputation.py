"""The imputation baselines and the literature fusions (medfuse, sparse_moe): each imputes or
skips what it says, against brute-force definitions; imputers are fitted on the train split only.
The registry-wide properties (absent garbage has no influence) are tested in test_model.py."""

import numpy as np
import polars as pl
import pytest
import torch

from medmix import config
from medmix.methods import method_spec
from medmix.model import FusionConfig, create_model, fusion_config
from medmix.model.fusion import InterDrFuse, InterLSTM, InterMoE, InterShaSpec
from medmix.model.imputation import ImputeKNN, ImputeToken, ImputeZero
from medmix.train import train_run
from medmix.tune import method_space

from conftest import TINY_CONFIG

DIMS = {"a": [3], "b": [2, 4]}


def _data(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = {m: torch.rand(n, len(d), generator=g) > 0.3 for m, d in DIMS.items()}
    M["a"][:, 0] |= ~torch.cat([M["b"]], 1).any(1)       # every row has something
    X = {m: [torch.randn(n, dk, generator=g) * M[m][:, k:k + 1] for k, dk in enumerate(d)] for m, d in DIMS.items()}
    return X, M


def _knn(k=3, bank=4096):
    return ImputeKNN(DIMS, FusionConfig(hidden=4, impute_k=k, impute_bank=bank))


def test_knn_imputes_the_mean_of_the_nearest_training_patients_who_have_the_input():
    X, M = _data()
    model = _knn(k=3)
    rows = torch.arange(20)                                   # rows 20.. are not training rows
    model.fit_inputs(X, M, rows, norm={})
    q, qm = {m: [x[20:] for x in xs] for m, xs in X.items()}, {m: v[20:] for m, v in M.items()}
    present = torch.cat([qm[m] for m in DIMS], 1)
    flat = [x for m in DIMS for x in q[m]]
    fills = model.fill(flat, present, {}, train=False)
    bank = [x[:20] for m in DIMS for x in X[m]]
    bmask = torch.cat([M[m] for m in DIMS], 1)[:20]
    for i in range(10):
        for j in range(3):
            # brute force: mean squared difference over the embedding dims both have
            d = []
            for r in range(20):
                both = [t for t in range(3) if present[i, t] and bmask[r, t]]
                dims = sum(bank[t].shape[1] for t in both)
                d.append(float(sum(((flat[t][i] - bank[t][r]) ** 2).sum() for t in both)) / dims if dims else np.inf)
            cand = [r for r in np.argsort(d, kind="stable") if bmask[r, j] and np.isfinite(d[r])][:3]
            want = torch.stack([bank[j][r] for r in cand]).mean(0) if cand else torch.zeros(bank[j].shape[1])
            assert torch.allclose(fills[j][i], want, atol=1e-5), (i, j)


def test_knn_distances_stay_fp32_under_bf16_autocast():
    """Training on a GPU runs under bf16 autocast: the neighbour search must neither fail (an
    in-place fp32 update of a bf16 matmul) nor lose precision; its fill equals the fp32 one."""
    X, M = _data()
    model = _knn(k=3)
    model.fit_inputs(X, M, torch.arange(20), norm={})
    flat = [x[20:] for m in DIMS for x in X[m]]
    present = torch.cat([M[m][20:] for m in DIMS], 1)
    want = model.fill(flat, present, {}, train=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.fill(flat, present, {}, train=False)
        out = model({"x": {m: [x[20:] for x in xs] for m, xs in X.items()}, "mask": {m: v[20:] for m, v in M.items()}})
    assert all(g.dtype == torch.float32 and torch.equal(g, w) for g, w in zip(got, want))
    assert torch.isfinite(out["logit"]).all()


def test_knn_never_takes_a_training_sample_as_its_own_neighbour():
    X, M = _data()
    for m in M:                                               # every row has every input
        M[m][:] = True
    X = {m: [torch.randn(30, d) for d in ds] for m, ds in DIMS.items()}
    model = _knn(k=1)
    model.fit_inputs(X, M, torch.arange(30), norm={})
    flat = [x for m in DIMS for x in X[m]]
    present = torch.ones(30, 3, dtype=torch.bool)
    own = model.fill(flat, present, {"row": torch.arange(30)}, train=True)
    plain = model.fill(flat, present, {}, train=False)
    assert all(torch.allclose(plain[j], flat[j]) for j in range(3))        # without the rule: itself
    assert not any(torch.allclose(own[j][i], flat[j][i]) for j in range(3) for i in range(30))


def test_knn_bank_is_a_seeded_subset_of_the_train_rows_and_survives_a_reload():
    X, M = _data(n=50)
    torch.manual_seed(0)
    model = _knn(bank=8)
    model.fit_inputs(X, M, torch.arange(0, 50, 2), norm={})
    assert len(model.bank_rows) == 8 and set(model.bank_rows.tolist()) <= set(range(0, 50, 2))
    fresh = _knn(bank=8)
    fresh.load_state_dict(model.state_dict())                 # strict, shapes from the checkpoint
    assert torch.equal(fresh.bank_rows, model.bank_rows) and torch.equal(fresh.bank1, model.bank1)
    batch = {"x": X, "mask": M}
    assert torch.equal(fresh.eval()(batch)["logit"], model.eval()(batch)["logit"])


def test_impute_zero_fills_the_raw_zero_and_impute_token_learns_its_fill():
    X, M = _data()
    norm = {m: [(torch.full((d,), 2.0), torch.full((d,), 4.0)) for d in ds] for m, ds in DIMS.items()}
    z = ImputeZero(DIMS, FusionConfig(hidden=4))
    z.fit_inputs(X, M, torch.arange(20), norm)
    assert torch.allclose(z.zero0, torch.full((3,), -0.5))   # (0 - 2) / 4
    t = ImputeToken(DIMS, FusionConfig(hidden=4, modality_dropout=0.0, expert_dropout=0.0))
    out = t({"x": X, "mask": M}, train=True, gen=torch.Generator().manual_seed(0))
    t.loss(out, torch.rand(30).round())[0].backward()
    absent_a = ~M["a"][:, 0]
    assert absent_a.any() and t.token[0].grad.abs().sum() > 0            # used where absent, so trained


def test_imputers_are_fitted_on_the_train_split_only(tiny_results, tmp_path, monkeypatch):
    seen = {}
    real = ImputeKNN.fit_inputs

    def spy(self, X, M, rows, norm):
        seen["rows"] = rows.cpu().numpy().copy()
        return real(self, X, M, rows, norm)
    monkeypatch.setattr(ImputeKNN, "fit_inputs", spy)
    cfg = config.validate(TINY_CONFIG)
    job = config.train_job(cfg, "tiny", "impute_knn")
    job["train"]["max_epochs"] = 2
    train_run(job, 0, tmp_path / "knn", results=tiny_results, progress=False)
    split = pl.read_parquet(tiny_results / "tiny" / "cohort.parquet")["split"].to_numpy()
    assert np.array_equal(seen["rows"], np.flatnonzero(split == "train"))
    bank_rows = torch.load(tmp_path / "knn" / "model.pt", weights_only=True)["state_dict"]["bank_rows"].numpy()
    assert len(bank_rows) and (split[bank_rows] == "train").all()


def test_settings_and_search_spaces_follow_what_each_method_reads():
    cfg = config.validate(TINY_CONFIG)
    assert "impute_k" in config.train_job(cfg, "tiny", "impute_knn")["train"]
    for m in ("early_concat", "medmix", "impute_mean"):
        assert not {"impute_k", "impute_bank", "lambda_aux"} & set(config.train_job(cfg, "tiny", m)["train"])
    for m in ("sparse_moe", "shaspec", "drfuse"):
        assert "lambda_aux" in config.train_job(cfg, "tiny", m)["train"]
    spaces = cfg["tuning"]["spaces"] if cfg.get("tuning") else config.validate(
        {**TINY_CONFIG, "tuning": {"trials": 2}})["tuning"]["spaces"]
    imp = set(method_space(method_spec("impute_token"), spaces))
    assert {"modality_dropout", "expert_dropout", "hidden", "lr"} <= imp and "d" not in imp
    assert "d" in method_space(method_spec("medfuse"), spaces)


def test_lstm_fusion_reads_only_the_available_tokens_in_order():
    torch.manual_seed(0)
    f = InterLSTM(4, 3)
    z = torch.randn(2, 3, 4)
    avail = torch.tensor([[True, False, True], [True, True, True]])
    u, beta = f(z, avail)
    seq = (z[0] + f.emb)[[0, 2]].unsqueeze(0)                # the sequence without the missing token
    _, (h, _) = f.lstm(seq)
    assert torch.allclose(u[0], h[-1, 0], atol=1e-6)
    assert torch.allclose(beta[0], torch.tensor([0.5, 0.0, 0.5]))


def test_moe_routes_each_token_to_two_experts_and_its_balance_loss_trains_the_router():
    torch.manual_seed(0)
    model = create_model(method_spec("sparse_moe"), {"a": [3], "b": [2]},
                         fusion_config(method_spec("sparse_moe"), {"d": 8, "hidden": 8, "lambda_aux": 0.5}))
    X, M = {"a": [torch.randn(16, 3)], "b": [torch.randn(16, 2)]}, {"a": torch.ones(16, 1, dtype=torch.bool),
                                                                     "b": torch.rand(16, 1) > 0.5}
    out = model({"x": X, "mask": M}, train=True, gen=torch.Generator().manual_seed(0))
    loss, parts = model.loss(out, torch.rand(16).round())
    assert "aux" in parts and parts["aux"] >= 1.0 - 1e-6   # E·Σ f P ≥ 1, equality when balanced
    loss.backward()
    assert model.student.inter.router.weight.grad.abs().sum() > 0
    inter = InterMoE(8, 3)
    z, avail = torch.randn(5, 3, 8), torch.tensor([[1, 1, 0]] * 5, dtype=torch.bool)
    u, _ = inter(z, avail)
    t = z.masked_fill(~avail.unsqueeze(-1), 0.0) + inter.emb
    gate, _, idx = inter.route(t)
    assert ((gate > 0).sum(-1) == 2).all() and torch.allclose(gate.sum(-1), torch.ones(5, 3))
    # sparse dispatch (only each token's two experts run) gives the dense output
    want = torch.stack([torch.stack([t[b, i] + sum(gate[b, i, e] * inter.experts[e](t[b, i]) for e in idx[b, i].tolist())
                                     for i in range(2)]).mean(0) for b in range(5)])
    assert torch.allclose(u, want, atol=1e-5)


def test_shaspec_gives_a_missing_modality_the_mean_shared_feature_and_classifies_the_specific_ones():
    torch.manual_seed(0)
    f = InterShaSpec(6, 3)
    z, avail = torch.randn(4, 3, 6), torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.bool)
    feat, s, p = f.features(z, avail)
    assert torch.allclose(feat[0, 1], (s[0, 0] + s[0, 2]) / 2, atol=1e-6)
    assert torch.allclose(feat[2, 0], s[2, 1], atol=1e-6) and torch.allclose(feat[2, 2], s[2, 1], atol=1e-6)
    assert torch.allclose(feat[1, 1], s[1, 1] + f.compose(torch.cat([s[1, 1], p[1, 1]])), atol=1e-6)
    f(z, avail)
    rows, mods = avail.nonzero(as_tuple=True)
    want = torch.nn.functional.cross_entropy(f.domain(p[rows, mods]), mods)
    assert torch.allclose(f.aux, want, atol=1e-6)


def test_drfuse_aux_is_pairwise_shared_alignment_plus_shared_distinct_orthogonality():
    torch.manual_seed(0)
    f = InterDrFuse(5, 3)
    z, avail = torch.randn(3, 3, 5), torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    _, beta = f(z, avail)
    s = torch.stack([f.shared[i](z[:, i]) for i in range(3)], 1)
    p = torch.stack([f.distinct[i](z[:, i]) for i in range(3)], 1)
    cos = torch.nn.functional.cosine_similarity
    ortho = [cos(s[b, i], p[b, i], dim=0) ** 2 for b in range(3) for i in range(3) if avail[b, i]]
    align = [1 - cos(s[b, i], s[b, j], dim=0) for b in range(3) for i in range(3) for j in range(3)
             if i != j and avail[b, i] and avail[b, j]]
    assert torch.allclose(f.aux, torch.stack(ortho).mean() + torch.stack(align).mean(), atol=1e-5)
    assert torch.allclose(beta[2], torch.tensor([0.0, 0.0, 1.0]))   # one modality: all its weight


@pytest.mark.parametrize("method", ["impute_zero", "impute_mean", "impute_token", "impute_knn", "medfuse", "sparse_moe",
                                    "shaspec", "drfuse"])
def test_new_methods_train_with_a_train_time_drop(tiny_results, tmp_path, method):
    job = config.train_job(config.validate(TINY_CONFIG), "tiny", method)
    job["train"]["max_epochs"] = 2
    job["drop"] = {"modality": "multi", "rate": 0.5, "seed": 1}
    m = train_run(job, 0, tmp_path / method, results=tiny_results, progress=False)
    assert m["train_drop"]["removed"] and 0 <= m["test"]["auroc"]["value"] <= 1
