"""Image encoders and image inputs.

Kinds:
- `open_clip`: the image tower (default, `tower: image`) or the text tower (`tower: text`) of an
  open_clip model: a built-in name with a `pretrained` tag, an `hf-hub:` name (BiomedCLIP), a
  `local-dir:` (or plain local directory) with open_clip_config.json + weights, each with its own
  normalisation; or `arch`: a randomly initialised tower built from config (tests, demo).
- `hf_vision`: ViT/DINOv2-style models through transformers' AutoModel (rad-dino, dinov2-large);
  CLS (default) or mean-of-patches pooling; `arch` builds a random-init config (`model_type`
  vit, dinov2, ...).

Inputs: PNG/JPEG (8- or 16-bit, grayscale → three channels), DICOM files (pydicom; rescale slope/intercept,
MONOCHROME1 inverted, multi-frame = a volume), NIfTI volumes (`.nii`, `.nii.gz`, nibabel) and DICOM
series (a directory of slices, ordered by position). A volume is encoded slice-wise
(`volume_slices` evenly spaced axial slices) and mean-pooled. Preprocessing: central crop of
`crop` of the short side, resize to `image_size`. Decoding runs in DataLoader workers
(`medmix embed --workers N`). An unreadable, empty or absent file marks the sample's modality
missing and is counted by reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from medmix.config import EncoderSpec
from medmix.encoders.base import (Batch, BatchedEncoder, Plan, offline_error, register_encoder, resolve_local)
from medmix.encoders.text import load_pretrained
from medmix.io import MedmixError

_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip OPENAI_DATASET_MEAN
_STD = (0.26862954, 0.26130258, 0.27577711)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class InputError(Exception):
    """An input file that cannot be used; `reason` is the counted missing-reason."""
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _to_uint8(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = float(np.min(a)), float(np.max(a))
    return ((a - lo) / (hi - lo + 1e-8) * 255).astype(np.uint8)


def load_image(path: str) -> Image.Image:
    """Open a PNG/JPEG (8- or 16-bit, grayscale or colour) as 8-bit "L" (grayscale) or "RGB".

    Grayscale stays one channel: one band is cropped and resized instead of three identical ones,
    and `_pre` broadcasts it to the three model channels, which gives exactly the numbers of
    converting to RGB first (measured against an RGB loop by `benchmarks/bench_image_encode.py`;
    figures in the README)."""
    img = Image.open(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img)), mode="L")
    return img if img.mode in ("L", "RGB") else img.convert("RGB")


def _is_dicom(p: Path) -> bool:
    if p.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(p, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_pixels(ds) -> np.ndarray:
    a = ds.pixel_array.astype(np.float32)
    a = a * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        a = a.max() - a
    return a


def _read_volume(p: Path) -> np.ndarray | None:
    """A DICOM file, DICOM-series directory or NIfTI file → (S, H, W) float or (S, H, W, 3) colour;
    None for any other file (a 2D image)."""
    name = p.name.lower()
    if p.is_dir():
        import pydicom
        files = [f for f in sorted(p.iterdir()) if f.is_file() and _is_dicom(f)]
        if not files:
            raise InputError("unreadable_dicom")
        try:
            dss = [pydicom.dcmread(f) for f in files]
            key = [(float(ds.ImagePositionPatient[2]) if "ImagePositionPatient" in ds else float(getattr(ds, "InstanceNumber", 0) or 0))
                   for ds in dss]
            return np.stack([_dicom_pixels(dss[i]) for i in np.argsort(key, kind="stable")])
        except Exception:  # noqa: BLE001 - any malformed slice
            raise InputError("unreadable_dicom") from None
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        import nibabel as nib
        try:
            a = np.asarray(nib.load(str(p)).get_fdata(dtype=np.float32))
        except Exception:  # noqa: BLE001
            raise InputError("unreadable_volume") from None
        while a.ndim > 3:       # 4D (time/channels): the first volume
            a = a[..., 0]
        if a.ndim == 2:
            a = a[..., None]
        return np.moveaxis(a, -1, 0)  # axial slices first: (S, H, W)
    if _is_dicom(p):
        import pydicom
        try:
            ds = pydicom.dcmread(p)
            a = _dicom_pixels(ds)
        except Exception:  # noqa: BLE001
            raise InputError("unreadable_dicom") from None
        if int(getattr(ds, "SamplesPerPixel", 1) or 1) == 3:
            return a[None] if a.ndim == 3 else a          # colour: (1, H, W, 3) or frames (S, H, W, 3)
        return a[None] if a.ndim == 2 else a              # multi-frame: (S, H, W)
    return None  # not a volume: a 2D image file


def _read_image(p: Path) -> Image.Image:
    try:
        img = load_image(str(p))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError("unreadable_image") from None
    return img


def load_slices(path: str, max_slices: int = 16) -> list[Image.Image]:
    """One input path → "L" or "RGB" images: one for a 2D image, up to `max_slices` evenly spaced
    slices of a volume."""
    p = Path(path)
    if not p.exists():
        raise InputError("file_not_found")
    if p.is_file() and os.path.getsize(p) == 0:
        raise InputError("empty_file")
    a = _read_volume(p)
    if a is None:
        return [_read_image(p)]
    if len(a) > max_slices:
        a = a[np.linspace(0, len(a) - 1, max_slices).round().astype(int)]
    if a.dtype != np.uint8:
        a = _to_uint8(a)  # one window per volume: slices keep their relative intensity
    return [Image.fromarray(s) for s in a]   # (H, W) → "L", (H, W, 3) → "RGB"


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], size: int, crop: float, mean, std, max_slices: int):
        self.paths, self.size, self.crop, self.max_slices = paths, size, crop, max_slices
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self):
        return len(self.paths)

    def _pre(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        s = min(w, h) * self.crop
        img = img.crop(((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2))
        img = img.resize((self.size, self.size), Image.BICUBIC)
        a = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
        x = a.unsqueeze(0) if a.ndim == 2 else a.permute(2, 0, 1)   # grayscale: one band, broadcast below
        return (x - self.mean) / self.std                         # (3, H, W) either way

    def __getitem__(self, i):
        try:
            slices = load_slices(self.paths[i], self.max_slices)
        except InputError as e:
            return torch.zeros(0, 3, self.size, self.size), e.reason
        return torch.stack([self._pre(s) for s in slices]), ""  # (S, 3, H, W)


def _collate(batch):
    reasons = [r for _, r in batch]
    xs = [x for x, _ in batch]
    owner = torch.cat([torch.full((len(x),), j, dtype=torch.long) for j, x in enumerate(xs)])
    return torch.cat(xs), owner, reasons


class _ImageEncoderBase(BatchedEncoder):
    """Plan: items in order, `batch_size` per batch; rows: the slices of the batch's items."""
    input = "image"
    preprocessing_keys = ("image_size", "crop", "volume_slices")

    def norm(self) -> tuple[tuple, tuple]:
        return self.load()[1]

    def prepare(self, items):
        bs = self.batch_size()
        order = np.arange(len(items))
        return Plan([order[s:s + bs] for s in range(0, len(order), bs)])

    def iter_batches(self, items, plan, todo, workers=0):
        mean, std = self.norm()
        ds = _Images(list(items), self.cfg.image_size, float(self.cfg.crop), mean, std, self.cfg.volume_slices)
        dl = torch.utils.data.DataLoader(ds, batch_sampler=[plan.batches[k].tolist() for k in todo],
                                         num_workers=workers, collate_fn=_collate)
        for k, (x, owner, reasons) in zip(todo, dl):
            yield k, Batch({"pixel_values": x}, reasons, owner)


def _open_clip_name(cfg: EncoderSpec) -> str:
    name = cfg.model
    if not name:
        raise MedmixError("open_clip encoder needs `model` or `arch`")
    if not name.startswith(("hf-hub:", "local-dir:")) and resolve_local(name) is not None:
        name = "local-dir:" + str(resolve_local(name))
    return name


def _open_clip_pretrained(cfg: EncoderSpec):
    import open_clip
    name = _open_clip_name(cfg)
    try:
        clip, _, pre = open_clip.create_model_and_transforms(name, pretrained=cfg.pretrained or None)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as e:  # noqa: BLE001
        raise offline_error(name, e) from None
    norm = [t for t in getattr(pre, "transforms", []) if type(t).__name__ == "Normalize"]
    mean, std = (tuple(norm[0].mean), tuple(norm[0].std)) if norm else (_MEAN, _STD)
    return clip, tokenizer, (mean, std)


class OpenClipImageEncoder(_ImageEncoderBase):
    def _load(self):
        from open_clip.transformer import VisionTransformer
        cfg = self.cfg
        if cfg.arch:
            a = dict(cfg.arch)
            torch.manual_seed(cfg.seed)
            model = VisionTransformer(
                image_size=cfg.image_size, patch_size=a.pop("patch_size", 16),
                width=a.pop("width", 64), layers=a.pop("layers", 2), heads=a.pop("heads", 2),
                mlp_ratio=a.pop("mlp_ratio", 4.0), output_dim=a.pop("embed_dim", 64), **a)
            model = model.eval().to(self.device)
            return model, (_MEAN, _STD)
        clip, _, norm = _open_clip_pretrained(cfg)
        clip = clip.eval().to(self.device)
        return clip.encode_image, norm

    def forward(self, rows):
        return self.load()[0](rows["pixel_values"])


class OpenClipTextEncoder(BatchedEncoder):
    """The text tower; CLIP pools at the end-of-text token, so batches are trimmed to their longest text."""
    input = "text"
    preprocessing_keys = ("max_length",)

    def _load(self):
        from open_clip.tokenizer import SimpleTokenizer
        from open_clip.transformer import TextTransformer
        cfg = self.cfg
        if cfg.arch:
            a = dict(cfg.arch)
            ctx = cfg.max_length
            torch.manual_seed(cfg.seed)
            model = TextTransformer(context_length=ctx, width=a.pop("width", 64), heads=a.pop("heads", 2),
                                    layers=a.pop("layers", 2), output_dim=a.pop("embed_dim", 64), **a)
            return model.eval().to(self.device), SimpleTokenizer(context_length=ctx), 0
        clip, tok, _ = _open_clip_pretrained(cfg)
        pad = getattr(getattr(tok, "tokenizer", None), "pad_token_id", None) or 0
        return clip.eval().to(self.device).encode_text, tok, pad

    def prepare(self, items):
        _, tok, pad = self.load()
        keep = [i for i, v in enumerate(items) if str(v).strip()]
        skipped = {i: "empty_text" for i, v in enumerate(items) if not str(v).strip()}
        tokens = tok([str(items[i]) for i in keep]) if keep else torch.zeros(0, 1, dtype=torch.long)
        lengths = (tokens != pad).sum(1).numpy()
        state = [None] * len(items)
        for i, t in zip(keep, tokens):
            state[i] = t
        order = np.array(keep, np.int64)[np.argsort(-lengths, kind="stable")] if keep else np.array([], np.int64)
        bs = self.batch_size()
        return Plan([order[s:s + bs] for s in range(0, len(order), bs)], skipped, state)

    def iter_batches(self, items, plan, todo, workers=0):
        for k in todo:
            idx = plan.batches[k]
            yield k, Batch({"text": torch.stack([plan.state[i] for i in idx])}, [""] * len(idx))

    def forward(self, rows):
        fwd, _, pad = self.load()
        t = rows["text"]
        width = int((t != pad).any(0).nonzero().max()) + 1  # drop the all-padding tail of the context
        return fwd(t[:, :width])


@register_encoder("open_clip")
def open_clip_encoder(spec: dict, device: str = "cpu"):
    """open_clip: `tower: image` (default) or `text`."""
    cls = OpenClipTextEncoder if EncoderSpec.from_dict(spec).tower == "text" else OpenClipImageEncoder
    enc = cls(spec, device)
    enc.kind = "open_clip"
    return enc


@register_encoder("hf_vision")
class HFVisionEncoder(_ImageEncoderBase):
    """transformers vision backbones: pooling `cls` (default) or `mean` over the patch tokens."""

    def _load(self):
        from transformers import AutoConfig, AutoImageProcessor, AutoModel
        cfg = self.cfg
        if cfg.arch:
            a = dict(cfg.arch)
            torch.manual_seed(cfg.seed)
            hf = AutoConfig.for_model(a.pop("model_type", "vit"), image_size=cfg.image_size, **a)
            return AutoModel.from_config(hf).eval().to(self.device), (_IMAGENET_MEAN, _IMAGENET_STD)
        if not cfg.model:
            raise MedmixError("hf_vision encoder needs `model` or `arch`")
        model = load_pretrained(cfg, AutoModel)
        try:
            proc = load_pretrained(cfg, AutoImageProcessor)
            norm = (tuple(proc.image_mean), tuple(proc.image_std))
        except MedmixError:  # weights without a processor config: ImageNet statistics
            norm = (_IMAGENET_MEAN, _IMAGENET_STD)
        return model.eval().to(self.device), norm

    def forward(self, rows):
        model = self.load()[0]
        h = model(pixel_values=rows["pixel_values"]).last_hidden_state.float()  # (B, 1 + patches [+ registers], H)
        return h[:, 1:].mean(1) if self.cfg.pooling == "mean" else h[:, 0]
