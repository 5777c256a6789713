"""MedMIX: intra-modality expert fusion, inter-modality fusion over available modalities, and a
training-only teacher branch (docs/design.md "The method", items 1-6).

Inputs (one batch):
    x[m]     list of expert embeddings of modality m, each (B, d_mk), standardised, 0 where absent
    mask[m]  (B, K_m) bool, expert k of modality m present
    tx, tmask  the same for teachers (training only; absent at inference)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from medmix.config import schema_default
from medmix.masks import keep_at_least_one
from medmix.methods import MethodSpec
from medmix.model.fusion import create_fusion
from medmix.model.registry import register_model
from medmix.model.losses import confidence, kd_loss, task_loss


_train = partial(schema_default, "train")


@dataclass
class FusionConfig:
    """The network's hyperparameters. Defaults are the schema's (`$defs/train`, one source);
    `intra`/`inter` come from the method (medmix.methods.MethodSpec), `task` from the cohort."""
    d: int = _train("d")                                  # shared width of projected expert embeddings
    hidden: int = _train("hidden")                        # head MLP width
    dropout: float = _train("dropout")
    intra: str = MethodSpec.intra
    inter: str = MethodSpec.inter
    modality_dropout: float = _train("modality_dropout")  # per available modality, at least one kept
    expert_dropout: float = _train("expert_dropout")      # per present expert, at least one per modality kept
    lambda_align: float = _train("lambda_align")
    lambda_kd: float = _train("lambda_kd")
    tau: float = _train("tau")                            # distillation temperature
    align: str = _train("align")                          # cosine (stop-gradient on the teacher) | infonce | relational
    align_on: str = _train("align_on")                    # modality | fused | both
    kd_weight: str = _train("kd_weight")                  # none | confidence (the teacher's probability of the label)
    impute_k: int = _train("impute_k")                    # impute_knn: neighbours averaged
    impute_bank: int = _train("impute_bank")              # impute_knn: training patients kept as neighbours
    lambda_aux: float = _train("lambda_aux")              # an inter fusion's auxiliary loss (moe, shaspec, drfuse)
    task: str = "binary"                                  # binary | multilabel | multiclass | survival (medmix.tasks)


def train_mask(mask: dict, mods: list[str], cfg: FusionConfig, gen: torch.Generator | None) -> dict:
    """The train-time expert and modality dropout (`expert_dropout`, `modality_dropout`): each
    present expert, then each available modality, dropped with its probability; a modality keeps
    one expert and a sample one modality. Every model that trains under dropout draws it here."""
    mask = {m: keep_at_least_one(mask[m], cfg.expert_dropout, gen) for m in mods}
    avail = torch.stack([mask[m].any(1) for m in mods], 1)
    keep = keep_at_least_one(avail, cfg.modality_dropout, gen)
    return {m: mask[m] & keep[:, i:i + 1] for i, m in enumerate(mods)}


def mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


class Branch(nn.Module):
    """Expert projection → intra fusion per modality → inter fusion over available modalities."""
    seed_stackable = True   # row-wise (medmix.model.ensemble), as every fusion it is built from must be

    def __init__(self, dims: dict[str, list[int]], cfg: FusionConfig):
        super().__init__()
        self.mods = list(dims)
        self.proj = nn.ModuleDict({m: nn.ModuleList(
            nn.Sequential(nn.Linear(dk, cfg.d), nn.LayerNorm(cfg.d)) for dk in dims[m]) for m in self.mods})
        self.drop = nn.Dropout(cfg.dropout)  # one call per modality on its stacked expert tokens
        self.intra = nn.ModuleDict({m: create_fusion("intra", cfg.intra, cfg.d, len(dims[m])) for m in self.mods})
        self.inter = create_fusion("inter", cfg.inter, cfg.d, len(self.mods))

    def forward(self, x: dict, mask: dict, finite: bool = False):
        """`finite`: every input value is finite (the trainer's batches). An absent expert's
        projection is zeroed below, which then zeroes its gradient exactly; only NaN or inf
        garbage would leak through that (0 · NaN), so only then are the inputs masked first: a
        copy of every input tensor (skipping it: the 5-seed ensemble ×2.86 → ×3.14 the plain loop,
        benchmarks/train_throughput.py)."""
        zs, alphas, avail = [], {}, []
        for m in self.mods:
            # absent experts: neither their (garbage) input nor its gradient takes part
            xm = x[m] if finite else [e.masked_fill(~mask[m][:, k:k + 1], 0.0) for k, e in enumerate(x[m])]
            h = torch.stack([p(e) for p, e in zip(self.proj[m], xm)], 1)       # (B, K, d)
            h = self.drop(h).masked_fill(~mask[m].unsqueeze(-1), 0.0)
            z, a = self.intra[m](h, mask[m])                                  # (B, d), (B, K)
            zs.append(z)
            alphas[m] = a
            avail.append(mask[m].any(1))
        z = torch.stack(zs, 1)                                                # (B, M, d)
        avail = torch.stack(avail, 1)                                         # (B, M)
        u, beta = self.inter(z, avail)                                        # (B, d), (B, M)
        return u, z, avail, alphas, beta


@register_model("medmix")
class MedMIX(nn.Module):
    """Student (small experts) with an optional teacher branch used only while training.

    Trainer-set attributes (training only, not part of the weights): `pos_weight`; `teacher_weight`,
    the factor on the alignment and distillation terms (the warm-up ramp); `teacher_frozen`, set by
    the two-stage schedule: the teacher branch is trained first (`teacher_stage`), then its outputs
    come precomputed in the batch (`t_logit`, `tu`, `tz`, `tavail`) and its task loss is left out.

    Seeds train together (medmix.model.ensemble) when every fusion it holds is row-wise: the forward
    is; the loss is computed per seed by the trainer."""
    seed_stackable = True

    def __init__(self, dims: dict[str, list[int]], cfg: FusionConfig, n_out: int = 1,
                 teacher_dims: dict[str, list[int]] | None = None):
        super().__init__()
        self.cfg = cfg
        self.student = Branch(dims, cfg)
        self.head = mlp(cfg.d, cfg.hidden, n_out, cfg.dropout)
        self.pos_weight = None
        self.teacher_weight, self.teacher_frozen = 1.0, False
        self.teacher = self.teacher_head = None
        self.align = nn.ModuleDict()
        if teacher_dims:
            self.teacher = Branch(teacher_dims, cfg)
            self.teacher_head = mlp(cfg.d, cfg.hidden, n_out, cfg.dropout)
            mods = [m for m in teacher_dims if m in dims] if cfg.align_on in ("modality", "both") else []
            self.align = nn.ModuleDict({m: nn.Linear(cfg.d, cfg.d) for m in mods})
            if cfg.align_on in ("fused", "both"):
                self.align["_fused"] = nn.Linear(cfg.d, cfg.d)  # '_' : never a modality name (config slugs)

    def forward(self, batch: dict, train: bool = False, gen: torch.Generator | None = None) -> dict:
        mask = train_mask(batch["mask"], self.student.mods, self.cfg, gen) if train else batch["mask"]
        u, z, avail, alphas, beta = self.student(batch["x"], mask, batch.get("finite", False))
        out = {"logit": self.head(u), "u": u, "z": z, "avail": avail, "alpha": alphas, "beta": beta}
        if train and self.teacher is not None:
            if "t_logit" in batch:     # a frozen teacher's outputs
                out.update({k: batch[k] for k in ("t_logit", "tu", "tz", "tavail")})
            elif batch.get("tx") is not None:
                out.update(self.teach(batch["tx"], batch["tmask"], batch.get("finite", False)))
        return out

    def teach(self, tx: dict, tmask: dict, finite: bool = False) -> dict:
        """The teacher branch's outputs on teacher inputs."""
        tu, tz, tavail, _, _ = self.teacher(tx, tmask, finite)
        return {"t_logit": self.teacher_head(tu), "tu": tu, "tz": tz, "tavail": tavail}

    def teacher_stage(self) -> nn.Module:
        """The teacher branch and head as a model of their own (the first stage of the two-stage
        schedule): inputs `x`/`mask` are the teacher embeddings, the loss is the teacher's task loss."""
        return _TeacherStage(self)

    def loss(self, out: dict, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """L = L_task(student) + L_task(teacher) + w (λ_align L_align + λ_kd L_kd) (rows with a label;
        w = `teacher_weight`; no teacher task term once the teacher is frozen); plus the reliability
        fusion's terms, and λ_aux × an inter fusion's own auxiliary loss (its `aux` after the forward)."""
        kind = self.cfg.task
        task = task_loss(kind, out["logit"], y, pos_weight=self.pos_weight)
        parts = {"task": task.item()}
        total = task
        if hasattr(self.student.inter, "confidence"):
            rel = reliability_loss(kind, self.head, self.student.inter, out["z"], out["avail"], y, self.pos_weight)
            total = total + rel
            parts["reliability"] = rel.item()
        aux = getattr(self.student.inter, "aux", None)   # moe, shaspec, drfuse (medmix.model.fusion)
        if aux is not None and self.cfg.lambda_aux > 0:
            total = total + self.cfg.lambda_aux * aux
            parts["aux"] = aux.item()
        if "t_logit" in out:
            has_t = out["tavail"].any(1)
            if not self.teacher_frozen:
                t_task = task_loss(kind, out["t_logit"], y, rows=has_t, pos_weight=self.pos_weight)
                total = total + t_task
                parts["teacher"] = t_task.item()
            align = self._align_loss(out)
            weight = confidence(kind, out["t_logit"], y) if self.cfg.kd_weight == "confidence" else None
            kd = kd_loss(kind, out["logit"], out["t_logit"], self.cfg.tau, has_t, weight=weight)
            total = total + self.teacher_weight * (self.cfg.lambda_align * align + self.cfg.lambda_kd * kd)
            parts.update(align=align.item(), kd=kd.item())
        return total, parts

    def _align_loss(self, out: dict) -> torch.Tensor:
        """Mean alignment over the aligned representations: each modality's fused experts z_m with
        the teacher's z_m (`align_on` modality), and/or the fused student u with the teacher's (fused)."""
        terms = []
        tmods = self.teacher.mods
        for i, m in enumerate(self.student.mods):
            if m not in self.align:
                continue
            j = tmods.index(m)
            both = out["avail"][:, i] & out["tavail"][:, j]
            if both.any():
                terms.append(self._align_pair(self.align[m](out["z"][both, i]), out["tz"][both, j].detach()))
        if "_fused" in self.align:
            both = out["avail"].any(1) & out["tavail"].any(1)
            if both.any():
                terms.append(self._align_pair(self.align["_fused"](out["u"][both]), out["tu"][both].detach()))
        return torch.stack(terms).mean() if terms else out["logit"].new_zeros(())

    def _align_pair(self, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """cosine: 1 − cos(p, g); infonce: in-batch contrastive (τ 0.1); relational: the batch's
        cosine-similarity matrix of p matches g's (similarity-preserving distillation, Tung & Mori 2019)."""
        if self.cfg.align == "infonce":
            logits = F.normalize(p, dim=-1) @ F.normalize(g, dim=-1).T / 0.1
            return F.cross_entropy(logits, torch.arange(len(p), device=p.device))
        if self.cfg.align == "relational":
            ps, gs = F.normalize(p, dim=-1), F.normalize(g, dim=-1)
            return F.mse_loss(ps @ ps.T, gs @ gs.T)
        return (1 - F.cosine_similarity(p, g, dim=-1)).mean()


def reliability_loss(kind: str, head: nn.Module, inter: nn.Module, z: torch.Tensor, avail: torch.Tensor,
                     y: torch.Tensor, pos_weight=None) -> torch.Tensor:
    """The reliability fusion's training terms, over each sample's available modalities: the head's
    task loss on each modality alone, plus the squared error of the predicted confidence c_m against
    the head's (detached) probability of the true label from that modality (mean over labels)."""
    b, m = avail.shape
    if not bool(avail.any()):
        return z.sum() * 0.0
    rows = avail.reshape(-1)
    logit = head(z.reshape(b * m, -1))                                        # (B·M, n_out)
    yy = y.repeat_interleave(m, 0)
    uni = task_loss(kind, logit, yy, rows=rows, pos_weight=pos_weight)
    tcp = confidence(kind, logit, yy)
    tcp = tcp.reshape(b * m, -1).mean(1) if tcp.dim() > 1 else tcp
    conf = inter.confidence(z).reshape(-1)
    return uni + F.mse_loss(conf[rows], tcp[rows].detach())


class _TeacherStage(nn.Module):
    seed_stackable = True
    def __init__(self, model: MedMIX):
        super().__init__()
        self.branch, self.head, self.cfg = model.teacher, model.teacher_head, model.cfg
        self.pos_weight = model.pos_weight

    def forward(self, batch: dict, train: bool = False, gen: torch.Generator | None = None) -> dict:
        u, _, avail, _, _ = self.branch(batch["x"], batch["mask"], batch.get("finite", False))
        return {"logit": self.head(u), "avail": avail}

    def loss(self, out: dict, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        t = task_loss(self.cfg.task, out["logit"], y, rows=out["avail"].any(1), pos_weight=self.pos_weight)
        return t, {"teacher": t.item()}
