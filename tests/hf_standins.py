"""Tiny, randomly initialised stand-ins for the paper's encoder pool, written into a Hugging Face cache.

`write_paper_pool(hf_home)` puts every model of `configs/paper_encoders.yaml` into
`{hf_home}/hub/` under its real repository id and in the real cache layout
(`models--{org}--{name}/{blobs,refs/main,snapshots/<commit>/...}`, snapshot files being symlinks to
content-addressed blobs), with the real architectures' config classes and the files each real
repository ships, quirks included:

- ncbi/MedCPT-Article-Encoder: BERT, `model.safetensors`, a fast tokenizer (tokenizer.json);
- emilyalsentzer/Bio_ClinicalBERT: BERT as its 2020 upload has it: `config.json` without
  `model_type` (transformers infers it from the name), `pytorch_model.bin`, `vocab.txt` only;
- Qwen/Qwen2-7B-Instruct: `Qwen2ForCausalLM` weights (the `model.` prefix AutoModel strips), a
  byte-level BPE tokenizer with the chat special tokens, `<|endoftext|>` as pad, no BOS;
- facebook/dinov2-large and microsoft/rad-dino: DINOv2 with their BitImageProcessor configs
  (rad-dino's own mean/std and 518 px crop);
- microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224: an open_clip `hf-hub:` repository
  (`open_clip_config.json` + `open_clip_pytorch_model.bin`) with a timm ViT image tower and an HF
  BERT text tower, whose config and tokenizer open_clip loads from the id in `hf_model_name`
  (written too, as its own cached repository).

The sizes are tiny (hidden width 32, two layers; the timm tower is vit_tiny) so the demo's DAG runs
them on a CPU in seconds. No code of medmix knows about them: they are found exactly as real
weights are, through `HF_HOME` with `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import tempfile
from pathlib import Path

import torch

MEDCPT = "ncbi/MedCPT-Article-Encoder"
BIOCLINICALBERT = "emilyalsentzer/Bio_ClinicalBERT"
QWEN2 = "Qwen/Qwen2-7B-Instruct"
DINOV2_LARGE = "facebook/dinov2-large"
RAD_DINO = "microsoft/rad-dino"
BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
PUBMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 512}
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = ("the patient no acute pneumonia effusion heart lungs normal chest left right history pain "
          "fever cough admitted icu blood pressure rate lab glucose sodium").split()


def commit_of(repo_id: str) -> str:
    """The stand-in's snapshot commit: 40 hex digits, fixed for the id."""
    return hashlib.sha1(f"medmix-standin:{repo_id}".encode()).hexdigest()


def _publish(hf_home: Path, repo_id: str, src: Path) -> Path:
    """Move the files of `src` into the cache layout of `repo_id`; returns the snapshot directory."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = commit_of(repo_id)
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = f.relative_to(src)
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.move(str(f), blob)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs" / "main").write_text(commit)
    return snap


def _bert_vocab() -> list[str]:
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return _SPECIALS + chars + ["##" + c for c in string.ascii_lowercase + string.digits] + _WORDS


def _bert(hf_home: Path, repo_id: str, seed: int, *, legacy: bool = False) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        vocab = _bert_vocab()
        (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
        torch.manual_seed(seed)
        BertModel(BertConfig(vocab_size=len(vocab), **TINY_BERT)).save_pretrained(d, safe_serialization=not legacy)
        if legacy:   # Bio_ClinicalBERT: config.json without model_type, vocab.txt, no tokenizer files
            cfg = json.loads((d / "config.json").read_text())
            for k in ("model_type", "architectures", "transformers_version", "dtype", "torch_dtype"):
                cfg.pop(k, None)
            (d / "config.json").write_text(json.dumps(cfg, indent=2))
        else:
            BertTokenizerFast(vocab_file=str(d / "vocab.txt"), do_lower_case=True,
                              model_max_length=512).save_pretrained(d)
        return _publish(hf_home, repo_id, d)


def _qwen2(hf_home: Path, seed: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2TokenizerFast
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    corpus = [" ".join(_WORDS), string.ascii_letters + string.digits + string.punctuation] * 4
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        tok = Qwen2TokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 bos_token=None, unk_token=None, model_max_length=32768)
        tok.save_pretrained(d)
        torch.manual_seed(seed)
        cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                          tie_word_embeddings=False, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                          bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"))
        Qwen2ForCausalLM(cfg).save_pretrained(d)
        return _publish(hf_home, QWEN2, d)


def _dinov2(hf_home: Path, repo_id: str, seed: int, *, crop: int, short: int, mean, std) -> Path:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        torch.manual_seed(seed)
        Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                 patch_size=14, image_size=518)).save_pretrained(d)
        BitImageProcessor(do_resize=True, size={"shortest_edge": short}, resample=3, do_center_crop=True,
                          crop_size={"height": crop, "width": crop}, do_normalize=True, image_mean=list(mean),
                          image_std=list(std), do_convert_rgb=True).save_pretrained(d)
        return _publish(hf_home, repo_id, d)


def _biomedclip(hf_home: Path, seed: int) -> Path:
    from open_clip.model import CustomTextCLIP
    text_tower = _bert(hf_home, PUBMEDBERT, seed + 100)    # the text tower's config and tokenizer, by hub id
    model_cfg = {
        "embed_dim": 64,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": PUBMEDBERT, "hf_tokenizer_name": PUBMEDBERT, "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
    }
    preprocess_cfg = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        torch.manual_seed(seed)
        # built from the snapshot directory (the same config open_clip reads by id at embed time)
        text_cfg = {**model_cfg["text_cfg"], "hf_model_name": str(text_tower), "hf_model_pretrained": False}
        clip = CustomTextCLIP(embed_dim=64, vision_cfg=model_cfg["vision_cfg"], text_cfg=text_cfg)
        torch.save(clip.state_dict(), d / "open_clip_pytorch_model.bin")
        (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg},
                                                            indent=2))
        return _publish(hf_home, BIOMEDCLIP, d)


def write_paper_pool(hf_home: Path) -> dict[str, Path]:
    """Every model of configs/paper_encoders.yaml, as a tiny stand-in in `hf_home`; {repo id: snapshot}."""
    hf_home = Path(hf_home)
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return {
        MEDCPT: _bert(hf_home, MEDCPT, 1),
        BIOCLINICALBERT: _bert(hf_home, BIOCLINICALBERT, 2, legacy=True),
        QWEN2: _qwen2(hf_home, 3),
        DINOV2_LARGE: _dinov2(hf_home, DINOV2_LARGE, 4, crop=224, short=256, mean=imagenet[0], std=imagenet[1]),
        RAD_DINO: _dinov2(hf_home, RAD_DINO, 5, crop=518, short=518, mean=(0.5307,) * 3, std=(0.2583,) * 3),
        BIOMEDCLIP: _biomedclip(hf_home, 6),
    }
