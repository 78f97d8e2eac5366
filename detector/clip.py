"""CLIP image embeddings through open-clip-torch, loaded only from weights that exist.

Weights come from the OpenCLIP hub cache (where `chimera models fetch` or open_clip
itself put them) or a local checkpoint path. Nothing is downloaded implicitly, and
randomly initialised weights are never used for results: when weights are missing
the embedder is *unavailable*, with the reason, and scoring goes on without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_WEIGHTS = "laion2b_s34b_b79k"
HUB_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ClipUnavailable(Exception):
    """CLIP cannot run here; str(e) is the reason recorded in results."""


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _model_name(model: str) -> str:
    """A config name, or a path to an open_clip model-config JSON (registered under its stem)."""
    import open_clip
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise ClipUnavailable(f"model config {path} not found")
        open_clip.add_model_config(path)
        return path.stem
    if open_clip.get_model_config(model) is None:
        raise ClipUnavailable(f"unknown open_clip model {model!r}")
    return model


def hub_holds_checkpoints() -> bool:
    """Whether the local HF hub cache holds any OpenCLIP checkpoint at all (any repo, any snapshot).

    Importing open_clip (torch, torchvision) takes seconds, most of a `chimera score` where no weights
    were ever fetched, only to learn there are none; a hub tag is loaded only from this cache
    (`cached_hub_weights`), so when it holds no checkpoint file of any model, no tag can load."""
    from huggingface_hub import constants
    root = Path(constants.HF_HUB_CACHE)
    return any(next(root.glob(f"models--*/snapshots/*/{name}"), None) is not None for name in HUB_FILENAMES)


def cached_hub_weights(model: str, tag: str) -> Path | None:
    """Path of the hub checkpoint for (model, tag) in the local HF cache, if present."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache
    cfg = open_clip.get_pretrained_cfg(model, tag)
    repo = (cfg or {}).get("hf_hub", "").rstrip("/")
    if not repo:
        return None
    for name in HUB_FILENAMES:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return Path(found)
    return None


@dataclass
class ClipEmbedder:
    """A loaded CLIP image tower with its exact identity (the store's descriptor)."""

    model: Any
    preprocess: Any
    descriptor: dict[str, Any]
    dim: int
    device: str

    kind = "clip"

    @classmethod
    def load(cls, model: str | None = None, weights: str | None = None, device: str = "cpu") -> "ClipEmbedder":
        """Load `model` with `weights` (a local checkpoint path or an OpenCLIP hub tag).

        Raises ClipUnavailable with a plain reason when that is not possible offline (before
        importing open_clip when the hub cache holds no checkpoint: `hub_holds_checkpoints`).
        """
        model, weights = chosen(model, weights)
        if model.endswith(".json") and not Path(model).is_file():
            raise ClipUnavailable(f"model config {model} not found")
        if local_checkpoint(weights) is None and not hub_holds_checkpoints():
            raise ClipUnavailable(_not_cached(weights, Path(model).stem if model.endswith(".json") else model)
                                  + "; the hub cache holds no OpenCLIP checkpoint of any model, so the model "
                                    "name itself was not checked")
        try:
            import open_clip
            import torch
        except ImportError as e:  # pragma: no cover - both are dependencies
            raise ClipUnavailable(f"open_clip not importable ({e})") from None
        name = _model_name(model)
        if (local := local_checkpoint(weights)) is not None:
            path, ident = local, {"checkpoint_sha256": file_digest(local)}
        else:
            path = cached_hub_weights(name, weights)
            if path is None:
                raise ClipUnavailable(_not_cached(weights, name))
            ident = {"hub_tag": weights}
        try:
            net, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(path), device=device)
        except Exception as e:  # a wrong or corrupt checkpoint: say why, never fall back to random
            raise ClipUnavailable(f"cannot load {path} into {name}: {str(e).splitlines()[0][:200]}") from None
        net.eval()
        size = net.visual.image_size
        cfg = {"image_size": list(size) if isinstance(size, (tuple, list)) else size,
               "mean": list(getattr(net.visual, "image_mean", None) or ()),
               "std": list(getattr(net.visual, "image_std", None) or ())}
        with torch.no_grad():
            dim = int(net.encode_image(torch.zeros(1, 3, *([size] * 2 if isinstance(size, int) else size),
                                                   device=device)).shape[-1])
        descriptor = {"embedder": "open_clip", "model": name, **ident, "preprocess": json.dumps(cfg, sort_keys=True),
                      "open_clip": open_clip.__version__}
        return cls(net, preprocess, descriptor, dim, device)

    @property
    def label(self) -> str:
        return f"open_clip {self.descriptor['model']} " + (
            self.descriptor.get("hub_tag") or f"checkpoint {self.descriptor.get('checkpoint_sha256')}")

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """L2-normalised image embeddings, one row per image (batched)."""
        import torch
        if not images:
            return np.zeros((0, self.dim), np.float32)
        batch = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        with torch.no_grad():
            feats = self.model.encode_image(batch).float()
        feats = torch.nn.functional.normalize(feats, dim=-1)
        return feats.cpu().numpy().astype(np.float32)


def _not_cached(weights: str, name: str) -> str:
    return (f"weights {weights!r} for {name} are not in the local cache and downloads are off "
            "(run `chimera models fetch` where the hub is reachable, or pass --clip-weights PATH)")


def chosen(model: str | None, weights: str | None) -> tuple[str, str]:
    """The model and weights asked for: the flags, else CHIMERA_CLIP_MODEL / CHIMERA_CLIP_WEIGHTS, else
    the defaults (one rule for loading and for `chimera models fetch`)."""
    return (model or os.environ.get("CHIMERA_CLIP_MODEL") or DEFAULT_MODEL,
            weights or os.environ.get("CHIMERA_CLIP_WEIGHTS") or DEFAULT_WEIGHTS)


def local_checkpoint(weights: str) -> Path | None:
    """The checkpoint file `weights` names, or None for a hub tag (tags have no slash or file suffix);
    ClipUnavailable when it names a file that is not there."""
    path = Path(weights)
    if path.is_file():
        return path
    if os.sep in weights or path.suffix.lower() in (".pt", ".pth", ".bin", ".safetensors", ".ckpt"):
        raise ClipUnavailable(f"no checkpoint file at {weights}")
    return None


def fetch(model: str | None = None, weights: str | None = None) -> Path:
    """Download hub weights into the open_clip/HF cache (explicit user action only)."""
    import open_clip
    model, weights = chosen(model, weights)
    name = _model_name(model)
    if (local := local_checkpoint(weights)) is not None:  # loaded as it is, never fetched
        return local
    open_clip.create_model_and_transforms(name, pretrained=weights)
    path = cached_hub_weights(name, weights)
    if path is None:
        raise ClipUnavailable(f"download of {weights} for {name} did not land in the cache")
    return path
