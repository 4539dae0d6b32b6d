"""W+ latent plumbing the StyleGAN generators share (rosinality's port and NVIDIA's networks).

* :func:`mapped_mean`: the average latent ``w_avg`` from mapped samples;
* :func:`gaussian_fit_of` and :func:`from_gaussian_fit`: PULSE's Gaussian fit
  of the mapping network's outputs and the map from its Gaussian-space proxy
  back to W+ (``latent_space="gaussian_fit"``);
* :func:`check_wplus_state`: the entries and the ``latent`` shape every split
  of a W+ generator must have.

The statistics are accumulated in float64, chunk by chunk, so their memory
does not grow with the number of samples.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LATENT_SPACES", "check_wplus_state", "from_gaussian_fit", "gaussian_fit_of", "mapped_mean"]

#: The ``latent_space`` values: W+ itself, or PULSE's Gaussian-space proxy of it.
LATENT_SPACES = ("w+", "gaussian_fit")


@torch.no_grad()
def mapped_mean(samples: Iterable[Tensor], n: int, width: int, device: torch.device) -> Tensor:
    """The mean ``[width]`` (float64) of ``n`` mapped latents given in chunks ``[m, width]``."""
    total = torch.zeros(width, dtype=torch.float64, device=device)
    for w in samples:
        total += w.double().sum(0)
    return total / n


@torch.no_grad()
def gaussian_fit_of(samples: Iterable[Tensor], n: int, width: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """PULSE's Gaussian fit: mean and unbiased std (each ``[width]``, float64) of ``leaky_relu(w, 5)``.

    ``leaky_relu(., 5)`` undoes the mapping network's final leaky ReLU (slope
    0.2), after which the mapped latents are close to Gaussian.

    Args:
        samples: the ``n`` mapped latents, in chunks ``[m, width]``.
        n: their number (>= 2).
        width: the latent width.
        device: where to accumulate.
    """
    s1 = torch.zeros(width, dtype=torch.float64, device=device)
    s2 = torch.zeros_like(s1)
    for w in samples:
        u = F.leaky_relu(w, 5.0).double()
        s1 += u.sum(0)
        s2 += u.pow(2).sum(0)
    mean = s1 / n
    var = (s2 - n * mean.pow(2)).clamp_min(0) / (n - 1)  # unbiased, as torch.std
    return mean, var.sqrt()


def from_gaussian_fit(latent: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """W+ rows ``leaky_relu(std * v + mean, 0.2)`` from Gaussian-space rows ``v``.

    ``mean`` and ``std`` broadcast against ``latent`` (``[w_dim]`` for one fit,
    ``[B, 1, w_dim]`` for a fit per problem).
    """
    return F.leaky_relu(latent * std.to(latent.dtype) + mean.to(latent.dtype), 0.2)


def check_wplus_state(state: Mapping[str, Tensor], split: int, names: Sequence[str], rows: int, width: int) -> None:
    """Refuse a state at ``split`` that lacks one of ``names`` or whose ``latent`` is not ``[B, rows, width]``.

    Raises:
        ValueError: naming the missing entries, or the expected and actual shape.
    """
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(
            f"the state at split {split} lacks entries {missing}; it needs {list(names)} "
            "(make it with init_variables() and advance())"
        )
    lat = state["latent"]
    if lat.dim() != 3 or tuple(lat.shape[1:]) != (rows, width):
        raise ValueError(
            f"state['latent'] at split {split} must be [B, {rows}, {width}] "
            f"(W+ rows {split}..{split + rows - 1}); got {tuple(lat.shape)}"
        )
