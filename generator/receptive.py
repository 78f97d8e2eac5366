"""Effective receptive field of a trained denoiser: how local its output really is.

Kamb & Ganguli (2025) explain convolutional diffusion models' creativity by locality: if each
output pixel depends on a patch of the noisy input only, samples become mosaics of training
patches. The architecture's nominal receptive field says little (both our Unets attend globally),
so we measure it: the gradient of one output pixel of the denoiser with respect to the noisy
input, and the radius around that pixel that holds 50% / 90% of the gradient's mass.
"""

from __future__ import annotations

import numpy as np
import torch
from denoising_diffusion_pytorch import GaussianDiffusion

TIME_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)  # of the diffusion's timesteps; late = noisier


def mass_radius(gradient: np.ndarray, centre: tuple[int, int], quantile: float) -> float:
    """Smallest Euclidean radius around `centre` holding `quantile` of the gradient's mass."""
    ys, xs = np.indices(gradient.shape)
    radius = np.hypot(ys - centre[0], xs - centre[1]).ravel()
    order = np.argsort(radius, kind="stable")
    cumulative = np.cumsum(gradient.ravel()[order])
    return float(radius[order][np.searchsorted(cumulative, quantile * cumulative[-1])])


def receptive_field(diffusion: GaussianDiffusion, icons: torch.Tensor, seed: int = 0) -> dict[str, list]:
    """r50 / r90 (pixels) of the centre pixel's input gradient, averaged over `icons` ([0, 1], NCHW)."""
    h, w = icons.shape[-2:]
    centre = (h // 2, w // 2)
    x0 = diffusion.normalize(icons.to(diffusion.device))
    times = [min(diffusion.num_timesteps - 1, round(f * diffusion.num_timesteps)) for f in TIME_FRACTIONS]
    r50, r90 = [], []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for t in times:
            tt = torch.full((len(x0),), t, device=x0.device, dtype=torch.long)
            xt = diffusion.q_sample(x0, tt, torch.randn_like(x0)).requires_grad_(True)
            out = diffusion.model(xt, tt)
            (grad,) = torch.autograd.grad(out[:, :, centre[0], centre[1]].sum(), xt)
            mass = grad.abs().sum(dim=(0, 1)).cpu().numpy()
            r50.append(mass_radius(mass, centre, 0.5))
            r90.append(mass_radius(mass, centre, 0.9))
    return {"t": times, "r50_px": r50, "r90_px": r90, "image_size": int(h)}
