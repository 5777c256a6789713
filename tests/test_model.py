import pytest
import torch

from medmix.model import FusionConfig, MedMIX, EarlyConcat, LateFusion, create_fusion, list_fusions
from medmix.model.fusion import masked_softmax
from medmix.masks import keep_at_least_one

DIMS = {"ehr": [5, 7], "notes": [6, 6], "cxr": [4, 3]}


def _batch(b=12, dims=DIMS, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = {m: torch.rand(b, len(d), generator=g) > 0.3 for m, d in dims.items()}
    for m in mask:
        mask[m][:, 0] |= torch.arange(b) % 2 == 0
    if "cxr" in mask:
        mask["cxr"][:3] = False  # three samples without a CXR
    x = {m: [torch.randn(b, dk, generator=g) * mask[m][:, k:k + 1] for k, dk in enumerate(d)] for m, d in dims.items()}
    return {"x": x, "mask": mask}


@pytest.mark.parametrize("level, name", list_fusions())
def test_every_registered_fusion_forward_backward_and_masks(level, name):
    d, n = 8, 3
    f = create_fusion(level, name, d, n)
    h = torch.randn(5, n, d, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    out, w = f(h, mask)
    assert out.shape == (5, d) and w.shape == (5, n)
    assert torch.all(w[~mask] == 0)                      # missing tokens get no weight
    assert torch.allclose(w[mask.any(1)].sum(1), torch.ones(int(mask.any(1).sum())))
    out.sum().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()
    if name != "transformer":  # a masked token cannot change the output
        h2 = h.detach().clone()
        h2[1, 1:] = 100
        out2, _ = f(h2, mask)
        assert torch.allclose(out.detach()[1], out2[1], atol=1e-5)


def test_masked_softmax_rows_without_entries_are_zero():
    w = masked_softmax(torch.randn(2, 3), torch.tensor([[True, False, True], [False, False, False]]))
    assert torch.allclose(w[1], torch.zeros(3)) and w[0, 1] == 0 and torch.isclose(w[0].sum(), torch.tensor(1.0))


def test_dropout_keeps_at_least_one():
    mask = torch.rand(500, 4) > 0.5
    kept = keep_at_least_one(mask, 0.9, torch.Generator().manual_seed(0))
    assert not (kept & ~mask).any()
    assert torch.equal(kept.any(1), mask.any(1))


def test_medmix_teacher_branch_trains_student_only_at_inference():
    cfg = FusionConfig(d=8, hidden=8)
    tdims = {"notes": [10], "cxr": [9]}
    model = MedMIX(DIMS, cfg, teacher_dims=tdims)
    b = _batch()
    tb = _batch(dims=tdims, seed=1)
    b.update(tx=tb["x"], tmask=tb["mask"])
    y = torch.tensor([0., 1.] * 6)
    out = model(b, train=True, gen=torch.Generator().manual_seed(0))
    loss, parts = model.loss(out, y)
    assert set(parts) == {"task", "teacher", "align", "kd"}
    loss.backward()
    assert model.align["notes"].weight.grad is not None
    inf = model(_batch(), train=False)
    assert "t_logit" not in inf
    assert torch.all(inf["beta"][:3, 2] == 0)             # no weight on the missing CXR
    assert inf["alpha"]["ehr"].shape == (12, 2)
    student = MedMIX(DIMS, cfg)                           # the deploy bundle: student only
    student_keys = {k for k in model.state_dict() if not k.startswith(("teacher", "align"))}
    assert student_keys == set(student.state_dict())


@pytest.mark.parametrize("cls", [EarlyConcat, LateFusion])
def test_baselines_forward_backward(cls):
    model = cls(DIMS, FusionConfig(d=8, hidden=8))
    out = model(_batch(), train=True)
    loss, _ = model.loss(out, torch.tensor([0., 1., float("nan")] * 4))
    loss.backward()
    assert out["logit"].shape == (12, 1) and torch.isfinite(loss)


def _garbage(batch, seed=5):
    """The same batch with absent experts' inputs replaced by huge garbage (and NaN)."""
    g = torch.Generator().manual_seed(seed)
    out = {"x": {}, "mask": batch["mask"]}
    for m, xs in batch["x"].items():
        out["x"][m] = []
        for k, x in enumerate(xs):
            junk = torch.randn(x.shape, generator=g) * 1e4
            junk[0] = float("nan")
            out["x"][m].append(torch.where(batch["mask"][m][:, k:k + 1], x, junk))
    return out


def _models() -> dict:
    """Every method of the registry (medmix.methods) on its registered architecture, plus MedMIX
    with every registered intra and inter fusion: a new method or fusion is tested for free."""
    from medmix.methods import METHODS, MethodSpec
    from medmix.model import create_model, fusion_config
    out = {name: (spec, {}) for name, spec in METHODS.items()}
    out.update({f"medmix_{level}_{f}": (MethodSpec("medmix", **{level: f}), {}) for level, f in list_fusions()})

    def build(spec):
        torch.manual_seed(0)
        model = create_model(spec, DIMS, fusion_config(spec, {"d": 8, "hidden": 8}))
        if getattr(model, "fitted", False):  # a closed-form model: give it non-zero weights
            for p in model.parameters():
                p.data.normal_()
        if hasattr(model, "fit_inputs"):     # an imputer: fitted on other (training) rows
            fit = _batch(b=40, seed=3)
            norm = {m: [(torch.randn(d), torch.rand(d) + 0.5) for d in ds] for m, ds in DIMS.items()}
            model.fit_inputs(fit["x"], fit["mask"], torch.arange(40), norm)
        return model
    return {name: (lambda spec=spec: build(spec)) for name, (spec, _) in out.items()}


MODELS = _models()


def _medmix_names() -> list[str]:
    return [n for n, build in MODELS.items() if isinstance(build(), MedMIX)]


@pytest.mark.parametrize("name", _medmix_names())
def test_finite_batches_skip_the_input_masking_and_train_the_same(name):
    """The trainer's batches say `finite` (medmix.train.make_batch): MedMIX then projects absent
    inputs unmasked. With finite garbage there, under train-time dropout, the outputs, the loss and
    every parameter's gradient are exactly those of the masked path on zeros."""
    clean = _batch(b=16)
    dirty = {"x": {m: [torch.where(clean["mask"][m][:, k:k + 1], x, torch.randn(x.shape) * 10)
                       for k, x in enumerate(xs)] for m, xs in clean["x"].items()},
             "mask": clean["mask"], "finite": True}
    runs = []
    for batch in (clean, dirty):
        model = MODELS[name]().train()
        out = model(batch, train=True, gen=torch.Generator().manual_seed(3))
        loss, _ = model.loss(out, (torch.arange(16) % 3 == 0).float())
        loss.backward()
        runs.append((out["logit"].detach(), loss.detach(), [p.grad for p in model.parameters()]))
    (la, sa, ga), (lb, sb, gb) = runs
    assert torch.equal(la, lb) and torch.equal(sa, sb)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(ga, gb))


@pytest.mark.parametrize("name", list(MODELS))
def test_absent_inputs_have_no_influence_and_no_gradient(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    clean = _batch()
    for m, xs in clean["x"].items():  # absent experts hold zeros (what the trainer feeds)
        clean["x"][m] = [x * clean["mask"][m][:, k:k + 1] for k, x in enumerate(xs)]
    dirty = _garbage(clean)
    for m in dirty["x"]:
        for x in dirty["x"][m]:
            x.requires_grad_(True)
    a = model(clean)["logit"]
    b = model(dirty)["logit"]
    assert torch.equal(a, b), "an absent input changed the output"
    b.sum().backward()
    for m in dirty["x"]:
        for k, x in enumerate(dirty["x"][m]):
            absent = ~dirty["mask"][m][:, k]
            assert torch.all(x.grad[absent] == 0)


def test_beta_sums_to_one_over_available_modalities():
    out = MedMIX(DIMS, FusionConfig(d=8, hidden=8)).eval()(_batch())
    avail = out["avail"]
    assert torch.allclose(out["beta"].sum(1), torch.ones(12)) and torch.all(out["beta"][~avail] == 0)


def test_confidence_is_the_teachers_probability_of_the_label_and_weights_kd():
    from medmix.model.losses import confidence, kd_loss
    t = torch.tensor([[2.0, -1.0], [-0.5, 0.3], [0.0, 4.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, float("nan")], [0.0, 1.0]])
    c = confidence("multilabel", t, y)
    p = torch.sigmoid(t)
    want = torch.tensor([[p[0, 0], 1 - p[0, 1]], [p[1, 0], 1.0], [1 - p[2, 0], p[2, 1]]])
    assert torch.allclose(c, want)
    yc = torch.tensor([2.0, 0.0, float("nan")])
    tc = torch.randn(3, 3)
    assert torch.allclose(confidence("multiclass", tc, yc), torch.stack([torch.softmax(tc[0], 0)[2],
                                                                         torch.softmax(tc[1], 0)[0], torch.tensor(1.0)]))
    s, rows = torch.randn(3, 2), torch.tensor([True, True, False])
    for kind, tt, w in (("multilabel", t, torch.ones(3, 2)), ("binary", t[:, :1], torch.ones(3)),
                        ("multiclass", tc, torch.ones(3))):
        ss = s if kind != "multiclass" else torch.randn(3, 3)
        ss = ss[:, :1] if kind == "binary" else ss
        assert torch.allclose(kd_loss(kind, ss, tt, 2.0, rows, weight=w), kd_loss(kind, ss, tt, 2.0, rows))
    # a weight of zero on a sample removes its term (brute force: the per-element BCE at τ)
    w = torch.tensor([[1.0, 0.0], [0.5, 1.0], [1.0, 1.0]])
    per = torch.nn.functional.binary_cross_entropy_with_logits(s / 2, torch.sigmoid(t / 2), reduction="none")
    assert torch.isclose(kd_loss("multilabel", s, t, 2.0, rows, weight=w), (per[:2] * w[:2]).mean() * 4)


@pytest.mark.parametrize("align", ["cosine", "infonce", "relational"])
@pytest.mark.parametrize("align_on", ["modality", "fused", "both"])
def test_every_alignment_trains_and_the_bundle_keeps_the_student_only(align, align_on):
    cfg = FusionConfig(d=8, hidden=8, align=align, align_on=align_on)
    tdims = {"notes": [10], "cxr": [9]}
    model = MedMIX(DIMS, cfg, teacher_dims=tdims)
    assert ("_fused" in model.align) == (align_on != "modality")
    assert ("notes" in model.align) == (align_on != "fused")
    b, tb = _batch(), _batch(dims=tdims, seed=1)
    b.update(tx=tb["x"], tmask=tb["mask"])
    out = model(b, train=True, gen=torch.Generator().manual_seed(0))
    a = model._align_loss(out)
    assert a.item() > 0
    a.backward()
    assert all(p.grad is not None for p in model.align.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())          # the teacher's side is a target
    # identical representations have nothing left to align (cosine and relational)
    if align != "infonce":
        g = torch.randn(6, 8)
        assert model._align_pair(g, g).abs().item() < 1e-6


def test_a_frozen_teachers_outputs_come_from_the_batch_and_its_task_loss_is_left_out():
    cfg = FusionConfig(d=8, hidden=8)
    tdims = {"notes": [10], "cxr": [9]}
    model = MedMIX(DIMS, cfg, teacher_dims=tdims)
    tb = _batch(dims=tdims, seed=1)
    with torch.no_grad():
        pre = model.teach(tb["x"], tb["mask"])
    model.teacher_frozen = True
    b = {**_batch(), **pre}
    y = torch.tensor([0., 1.] * 6)
    out = model(b, train=True, gen=torch.Generator().manual_seed(0))
    loss, parts = model.loss(out, y)
    assert set(parts) == {"task", "align", "kd"}
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    model.zero_grad()
    model.teacher_weight = 0.0                                                # warm-up at its start
    out = model(b, train=True, gen=torch.Generator().manual_seed(0))
    l0, p0 = model.loss(out, y)
    assert torch.isclose(l0, torch.tensor(p0["task"]))


def test_reliability_fusion_learns_which_modality_to_trust():
    """Modality 'a' carries the label, 'b' is noise: trained with the task, the reliability
    fusion's confidence and weight β are higher for 'a' (the weights stay a distribution)."""
    torch.manual_seed(0)
    dims = {"a": [4], "b": [4]}
    n = 256
    y = (torch.rand(n) > 0.5).float()
    xa = torch.randn(n, 4) + 2.0 * (y[:, None] - 0.5)
    xb = torch.randn(n, 4)
    batch = {"x": {"a": [xa], "b": [xb]}, "mask": {"a": torch.ones(n, 1, dtype=torch.bool), "b": torch.ones(n, 1, dtype=torch.bool)}}
    model = MedMIX(dims, FusionConfig(d=8, hidden=8, inter="reliability", modality_dropout=0.0, expert_dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        loss, parts = model.loss(model(batch, train=True, gen=torch.Generator().manual_seed(0)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert "reliability" in parts
    out = model.eval()(batch)
    conf = model.student.inter.confidence(out["z"])
    assert conf[:, 0].mean() > conf[:, 1].mean() + 0.1
    assert out["beta"][:, 0].mean() > 0.5 and torch.allclose(out["beta"].sum(1), torch.ones(n))
