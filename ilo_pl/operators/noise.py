"""Measurement noise: noise models (components of operators) and denoising.

A noise model is an ``nn.Module`` called as ``noise_model(y, generator)`` on a
noiseless measurement ``y = A(x)``; every operator carries one (or ``None``)
as its :attr:`~ilo_pl.operators.base.Operator.noise_model`.

Scale convention of :class:`GaussianNoiseModel` (as in the image-denoising
literature and the ILO paper): ``sigma`` is given on the 0..255 scale of 8-bit
images. Images here live in ``[-1, 1]`` (a range of 2), so the standard
deviation actually added is

    std = 2 * sigma / 255        (e.g. sigma=25 -> std ~= 0.196)

i.e. ``sigma / 255`` of the ``[0, 1]`` range. After adding the noise the
observation is clipped to the valid range ``[-1, 1]`` as in the paper (turn
this off with ``clip=False`` for measurements that are not images, e.g.
compressed-sensing measurements).

Denoising is :class:`GaussianNoise`: ``A = I`` with a Gaussian noise model.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ilo_pl.operators.base import Identity, OperatorSpec


def sigma_to_std(sigma: float) -> float:
    """The standard deviation on the ``[-1, 1]`` scale of a sigma on the 0..255 scale."""
    return 2.0 * float(sigma) / 255.0


def gaussian_like(y: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Standard normal noise shaped like ``y`` (on ``y``'s device and dtype).

    With a ``generator`` the draw is made on the generator's device and then
    moved, so a CPU generator gives the same noise whatever the device of ``y``;
    without one, fresh noise is drawn from the global RNG on ``y``'s device.
    """
    if generator is None:
        return torch.randn(y.shape, device=y.device, dtype=y.dtype)
    z = torch.randn(y.shape, generator=generator, device=generator.device, dtype=y.dtype)
    return z.to(y.device)


class NoiseModel(nn.Module):
    """Base class of noise models: ``forward(y, generator=None)`` returns a noisy copy of ``y``.

    Contract (checked by :func:`ilo_pl.testing.operators.check_operator`):
    the result has ``y``'s shape and dtype; with a seeded ``generator`` it is
    reproducible; without one the noise is fresh at every call; it is
    differentiable in ``y`` (Stochastic Noise Addition backpropagates
    through it).
    """

    def forward(self, y: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} does not define forward(y, generator)")


class GaussianNoiseModel(NoiseModel):
    """``clip(y + n, -1, 1)`` with ``n ~ N(0, (2 * sigma / 255)^2)`` per entry.

    Differentiable with respect to ``y`` (``clamp`` has gradient 1 inside the
    range). Without a generator, fresh noise is drawn at every call.

    Args:
        sigma: noise level on the 0..255 scale (``>= 0``; 256 and above are
            allowed: heavy noise). The std on the ``[-1, 1]`` scale is
            ``2 * sigma / 255``.
        clip: clip the noisy result to ``[-1, 1]`` (the valid image range);
            ``False`` for measurements that are not images.

    Raises:
        ValueError: if ``sigma`` is negative or not finite.
    """

    def __init__(self, sigma: float, clip: bool = True) -> None:
        super().__init__()
        sigma = float(sigma)
        if not (sigma >= 0 and sigma < float("inf")):
            raise ValueError(
                f"the noise level sigma must be a finite number >= 0 on the 0..255 scale; got {sigma}"
            )
        self.sigma = sigma
        self.clip = bool(clip)

    @property
    def std(self) -> float:
        """The standard deviation added on the ``[-1, 1]`` scale: ``2 * sigma / 255``."""
        return sigma_to_std(self.sigma)

    def forward(self, y: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Add ``N(0, std^2)`` noise to ``y`` and clip to ``[-1, 1]`` (when ``clip``)."""
        out = y + self.std * gaussian_like(y, generator) if self.sigma > 0 else y
        return out.clamp(-1.0, 1.0) if self.clip else out

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g} (std={self.std:.4g} on [-1, 1]), clip={self.clip}"


class GaussianNoise(Identity):
    """Denoising: ``A = I`` with a :class:`GaussianNoiseModel` of ``sigma`` (0..255 scale).

    ``y = clip(x + n, -1, 1)`` with ``n ~ N(0, (2 * sigma / 255)^2)`` per
    entry. Equivalent to ``Identity(noise_model=GaussianNoiseModel(sigma, clip))``;
    :attr:`sigma`, :attr:`clip` and :attr:`std` read the noise model.

    Args:
        sigma: noise level on the 0..255 scale (``>= 0``).
        clip: clip the noisy result to ``[-1, 1]``.

    Raises:
        ValueError: if ``sigma`` is negative or not finite.
    """

    def __init__(self, sigma: float, clip: bool = True) -> None:
        super().__init__(noise_model=GaussianNoiseModel(sigma, clip))

    @property
    def sigma(self) -> float:
        """The noise level on the 0..255 scale."""
        return self.noise_model.sigma

    @property
    def clip(self) -> bool:
        """Whether observations are clipped to ``[-1, 1]``."""
        return self.noise_model.clip

    @property
    def std(self) -> float:
        """The standard deviation added on the ``[-1, 1]`` scale: ``2 * sigma / 255``."""
        return self.noise_model.std


class Denoising(OperatorSpec):
    """Spec of :class:`GaussianNoise`: denoising at a known sigma (0..255 scale).

    Config::

        operator:
          class_path: ilo_pl.operators.noise.Denoising
          init_args: {sigma: 25}

    Args:
        sigma: noise level on the 0..255 scale (std ``2 * sigma / 255`` on ``[-1, 1]``).
        clip: clip observations to ``[-1, 1]``.
    """

    shared = True

    def __init__(self, sigma: float, clip: bool = True) -> None:
        GaussianNoiseModel(sigma, clip)  # validate now, so a bad config fails at parse time
        self.sigma = float(sigma)
        self.clip = bool(clip)

    def build(self, image_shape: Tuple[int, int, int], seed: int, name: Optional[str] = None) -> GaussianNoise:
        return GaussianNoise(self.sigma, self.clip)
