"""`open_clip`: the image tower of an open_clip model.

Pretrained: a built-in name with a `pretrained` tag, or an `hf-hub:` name (BiomedCLIP), each
with its own normalisation. `arch`: a randomly initialised open_clip VisionTransformer built from
config (tests, demo). Preprocessing: grayscale → RGB, central crop of `crop` of the short side,
resize to `image_size`. Images are decoded by a DataLoader (`medmix embed --workers N` worker
processes; 0 = in the main process); an unreadable, empty or absent
file marks the sample's modality missing and is counted by reason.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from medmix.encoders.base import EncodeResult, Encoder, offline_error, register_encoder
from medmix.io import MedmixError

_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip OPENAI_DATASET_MEAN
_STD = (0.26862954, 0.26130258, 0.27577711)


def load_image(path: str) -> Image.Image:
    """Open a PNG/JPEG (8- or 16-bit, grayscale or colour) as RGB."""
    img = Image.open(path)
    if img.mode in ("I;16", "I;16B", "I", "F"):
        a = np.asarray(img, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo + 1e-8) * 255
        img = Image.fromarray(a.astype(np.uint8), mode="L")
    return img.convert("RGB")


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], size: int, crop: float, mean, std):
        self.paths, self.size, self.crop = paths, size, crop
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        p = self.paths[i]
        try:
            if os.path.getsize(p) == 0:
                return torch.zeros(3, self.size, self.size), "empty_file"
            img = load_image(p)
            img.load()
        except FileNotFoundError:
            return torch.zeros(3, self.size, self.size), "file_not_found"
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return torch.zeros(3, self.size, self.size), "unreadable_image"
        w, h = img.size
        s = min(w, h) * self.crop
        img = img.crop(((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2))
        img = img.resize((self.size, self.size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self.mean) / self.std, ""


@register_encoder("open_clip")
class OpenClipImageEncoder(Encoder):
    input = "image"
    preprocessing_keys = ("image_size", "crop")

    def _load(self):
        import open_clip
        from open_clip.transformer import VisionTransformer
        spec = self.spec
        if spec.get("arch"):
            a = dict(spec["arch"])
            torch.manual_seed(int(spec.get("seed", 0)))
            model = VisionTransformer(
                image_size=int(spec.get("image_size", 224)), patch_size=a.pop("patch_size", 16),
                width=a.pop("width", 64), layers=a.pop("layers", 2), heads=a.pop("heads", 2),
                mlp_ratio=a.pop("mlp_ratio", 4.0), output_dim=a.pop("embed_dim", 64), **a)
            mean, std = _MEAN, _STD
            fwd = model
        else:
            name = spec.get("model") or ""
            if not name:
                raise MedmixError("open_clip encoder needs `model` or `arch`")
            try:
                clip, _, pre = open_clip.create_model_and_transforms(name, pretrained=spec.get("pretrained") or None)
            except Exception as e:  # noqa: BLE001
                raise offline_error(name, e) from None
            norm = [t for t in getattr(pre, "transforms", []) if type(t).__name__ == "Normalize"]
            mean, std = (tuple(norm[0].mean), tuple(norm[0].std)) if norm else (_MEAN, _STD)
            model = clip
            fwd = clip.encode_image
        return model.eval().to(self.device), fwd, mean, std

    @torch.inference_mode()
    def encode(self, values, split=None, workers: int = 0) -> EncodeResult:
        n = len(values)
        present = np.zeros(n, dtype=bool)
        keep = [i for i, v in enumerate(values) if v is not None]
        if not keep:
            return EncodeResult(np.zeros((n, 0), np.float32), present, {})
        model, fwd, mean, std = self._load()
        size = int(self.spec.get("image_size", 224))
        ds = _Images([values[i] for i in keep], size, float(self.spec.get("crop", 1.0)), mean, std)
        dl = torch.utils.data.DataLoader(ds, batch_size=int(self.spec.get("batch_size", 64)), num_workers=workers)
        out = None
        missing: dict[str, int] = {}
        use_amp = self.device.startswith("cuda")
        pos = 0
        with tqdm(total=len(keep), desc=f"encode {self.model_name()}", unit="img", mininterval=2) as bar:
            for x, err in dl:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                    e = fwd(x.to(self.device)).float().cpu().numpy()
                if out is None:
                    out = np.zeros((n, e.shape[1]), np.float32)
                for j, msg in enumerate(err):
                    i = keep[pos + j]
                    if msg:
                        missing[msg] = missing.get(msg, 0) + 1
                    else:
                        out[i] = e[j]
                        present[i] = True
                pos += len(err)
                bar.update(len(err))
        return EncodeResult(out, present, missing)
