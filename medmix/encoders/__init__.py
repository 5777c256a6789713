"""Encoder registry: `register_encoder` / `list_encoders` / `create_encoder`.

An encoder turns one modality's inputs into one fixed-size embedding per sample. Kinds are
described as data in config.yaml (`encoders:`) and built here.
"""

from __future__ import annotations

from medmix.encoders.base import Encoder, EncodeResult, register_encoder, list_encoders, create_encoder

# importing the kinds registers them
from medmix.encoders import text as _text  # noqa: F401,E402
from medmix.encoders import image as _image  # noqa: F401,E402
from medmix.encoders import tabular as _tabular  # noqa: F401,E402
from medmix.encoders import tfidf as _tfidf  # noqa: F401,E402
from medmix.encoders import features as _features  # noqa: F401,E402

__all__ = ["Encoder", "EncodeResult", "register_encoder", "list_encoders", "create_encoder"]
