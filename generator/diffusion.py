"""The chimera diffusion setup: presets, model construction, checkpoints and quiet DDIM sampling.

Shared by training, sampling and analysis so that a checkpoint alone (it carries its resolved
config) is enough to rebuild the exact `Unet` + `GaussianDiffusion` of denoising-diffusion-pytorch
that produced it.
"""

from __future__ import annotations

import pickle
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import denoising_diffusion_pytorch.denoising_diffusion_pytorch as ddp
import torch
from denoising_diffusion_pytorch import GaussianDiffusion, Unet
from ema_pytorch import EMA


@dataclass(frozen=True)
class Config:
    """Every knob of a run. `SCHEDULE` knobs may change on resume; the others define the run."""

    dim: int
    dim_mults: tuple[int, ...]
    image_size: int
    batch_size: int = 16
    lr: float = 8e-5
    timesteps: int = 1000
    sampling_timesteps: int = 50  # DDIM steps used by `sample` unless told otherwise
    objective: str = "pred_v"
    beta_schedule: str = "sigmoid"
    ema_decay: float = 0.995
    ema_update_every: int = 10
    ema_after: int = 100  # steps during which the EMA just copies the model
    max_grad_norm: float = 1.0
    flip: bool = False  # off: a face's layout is what the experiment measures
    steps: int = 50_000
    sample_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 5  # older ckpt-<step>.pt are deleted; 0 keeps all
    grid: int = 16  # images per sample grid
    grid_sampling_steps: int = 10  # DDIM steps for the grids: cheap, only a progress picture


SCHEDULE = frozenset({"steps", "sample_every", "checkpoint_every", "keep_checkpoints", "grid", "grid_sampling_steps"})

_SMALL = dict(
    image_size=32, batch_size=16, lr=5e-4, ema_update_every=1, ema_after=50,
    steps=800, sample_every=200, checkpoint_every=200,
)
PRESETS: dict[str, dict[str, Any]] = {
    # the preprint's hourglass: one downsampling, a 16x wide bottleneck at half resolution
    "seed": dict(dim=64, dim_mults=(1, 16), image_size=64),
    "seed-baseline": dict(dim=64, dim_mults=(1, 2, 4, 8), image_size=64),
    # CPU scale: same shapes of network, 4x narrower, half the resolution
    "small": dict(dim=16, dim_mults=(1, 16), **_SMALL),
    "small-baseline": dict(dim=16, dim_mults=(1, 2, 4, 8), **_SMALL),
}


def resolve(preset: str, **overrides: Any) -> Config:
    """The preset's config with `overrides` applied; unknown presets or knobs are a ValueError."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown config knob(s) {', '.join(unknown)}; knobs: {', '.join(sorted(known))}")
    config = Config(**{**PRESETS[preset], **overrides})
    return replace(config, dim_mults=tuple(int(m) for m in config.dim_mults))


def identity(config: Config) -> dict[str, Any]:
    """The knobs that change what is learned: two runs with equal identities are the same run."""
    return {k: v for k, v in asdict(config).items() if k not in SCHEDULE}


def build(config: Config) -> GaussianDiffusion:
    unet = Unet(dim=config.dim, dim_mults=config.dim_mults, flash_attn=False)
    return GaussianDiffusion(
        unet, image_size=config.image_size, timesteps=config.timesteps,
        sampling_timesteps=min(config.sampling_timesteps, config.timesteps),
        objective=config.objective, beta_schedule=config.beta_schedule,
    )


def make_ema(diffusion: GaussianDiffusion, config: Config) -> EMA:
    """EMA of the weights; the online model is left out of its state (the checkpoint has it already)."""
    return EMA(
        diffusion, beta=config.ema_decay, update_every=config.ema_update_every,
        update_after_step=config.ema_after, include_online_model=False,
    )


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


CHECKPOINT_KEYS = ("format", "run", "config", "step", "seconds", "model", "ema", "optimizer", "rng", "losses")


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint written by `generator.train`; only tensors and plain types, so weights_only loading."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:  # truncated, or not a checkpoint at all
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable checkpoint ({reason})") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:  # a torch file of something else, or cut down by hand: one line, not a KeyError later
        raise ValueError(f"{path} is not a chimera training checkpoint (it lacks {', '.join(missing)})")
    try:
        Config(**ckpt["config"])
    except TypeError:  # fields this version does not know, or lacks: not a checkpoint it can rebuild
        raise ValueError(f"{path} was written with another training configuration than this version's "
                         "(train again, or use the version that wrote it)") from None
    return ckpt


def sampler(checkpoint: dict[str, Any], device: torch.device) -> tuple[Config, GaussianDiffusion]:
    """The EMA model of a checkpoint, ready to sample: EMA weights give the cleaner samples."""
    config = Config(**{**checkpoint["config"], "dim_mults": tuple(checkpoint["config"]["dim_mults"])})
    diffusion = build(config).to(device)
    ema = make_ema(diffusion, config).to(device)
    ema.load_state_dict(checkpoint["ema"])
    model = ema.ema_model
    model.eval()
    return config, model


@contextmanager
def quiet_library() -> Iterator[None]:
    """Silence the library's per-step sampling progress bar, which would interleave with ours."""
    with mock.patch.object(ddp, "tqdm", lambda iterable, **_: iterable):
        yield


def ddim(diffusion: GaussianDiffusion, n: int, steps: int, seed: int) -> torch.Tensor:
    """`n` images in [0, 1] by the library's deterministic DDIM (eta 0) with `steps` steps.

    The global RNG is forked and seeded, so the result depends on `seed` only and training that
    draws grids in between stays on the same random stream as training that does not.
    """
    if not 1 <= steps <= diffusion.num_timesteps:
        raise ValueError(f"sampling steps must be in 1..{diffusion.num_timesteps}, got {steps}")
    h, w = diffusion.image_size
    previous = diffusion.sampling_timesteps
    with torch.random.fork_rng(), quiet_library():
        torch.manual_seed(seed)
        diffusion.sampling_timesteps = steps
        try:
            return diffusion.ddim_sample((n, diffusion.channels, h, w)).clamp(0, 1)
        finally:
            diffusion.sampling_timesteps = previous
