"""What the perceptual loss terms (:class:`~ilo_pl.losses.LPIPSLoss`, :class:`~ilo_pl.losses.STLPIPSLoss`) share.

A perceptual term compares two RGB images with a frozen network. Where the
comparison happens is the ``space`` argument:

* ``"image"``: the generated image ``G(v)`` against
  ``operator.superimpose(image, observation)``: the observation itself for
  image-space operators (denoising), and for inpainting the observation with
  its unobserved pixels filled with the generated ones (so missing pixels add
  no mismatch).
* ``"observation"``: the measurement of the generated image ``A(G(v))`` (the
  engine's ``ctx.measured``, with SNA noise when SNA is on) against the
  observation ``y``, for measurements that are themselves images of another
  size, such as super-resolution's low-resolution image: the distance at the
  observation's resolution, as the ILO paper computes LPIPS there.
* ``"auto"`` (default): image space when ``superimpose`` gives an image,
  else observation space when the measurement is an image ``[B, 3, h, w]``
  of the observation's shape, else a ``ValueError`` (compressed-sensing
  measurements and class labels are not images: drop the term's weight there).

Both compared images are then resized to ``resize x resize`` (bilinear,
antialiased; 256 as in the ILO paper) before the network, unless ``resize``
is ``None``.
"""

from __future__ import annotations

from typing import ClassVar, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

from ilo_pl.losses.base import LossContext, LossTerm

#: Where a perceptual term compares (see the module docstring).
SPACES = ("auto", "image", "observation")


def _is_image(t: Tensor) -> bool:
    """Whether ``t`` is a float RGB image batch ``[B, 3, h, w]``."""
    return t.dim() == 4 and t.shape[1] == 3 and t.is_floating_point()


class PerceptualLoss(LossTerm):
    """Base of the per-sample perceptual distances: which pair of images, at what size.

    Subclasses set :attr:`metric` and :attr:`loss_key` (for messages) and
    :attr:`min_size`, call :meth:`_init_pairing` in their ``__init__``, and
    implement :meth:`network_distance`.

    Attributes:
        resize: side both images are resized to (``None``: as they are).
        detach_reference: whether the reference image is a constant target.
        space: ``"auto"``, ``"image"`` or ``"observation"``.
    """

    #: The metric's name in messages (``"LPIPS"``).
    metric: ClassVar[str] = "perceptual distance"
    #: The loss name configs usually give the term (``"lpips"``), for messages.
    loss_key: ClassVar[str] = "perceptual"
    #: The smallest image side the network takes (an instance may set its own).
    min_size: int = 16

    resize: Optional[int]
    detach_reference: bool
    space: str

    def _init_pairing(self, resize: Optional[int], detach_reference: bool, space: str) -> None:
        """Check and keep the pairing options.

        Raises:
            ValueError: unknown ``space`` or bad ``resize``.
        """
        if space not in SPACES:
            raise ValueError(
                f"unknown {self.metric} space {space!r}; choose 'auto', 'image' (G(v) against the "
                "superimposed observation) or 'observation' (A(G(v)) against y)"
            )
        if resize is not None and (not isinstance(resize, int) or isinstance(resize, bool) or resize < self.min_size):
            raise ValueError(
                f"resize must be None or an int >= {self.min_size} (the networks downsample); got {resize!r}"
            )
        self.resize, self.detach_reference, self.space = resize, detach_reference, space

    def train(self, mode: bool = True) -> "PerceptualLoss":
        # Frozen metric: Lightning's model.train() must not switch anything to training mode.
        return super().train(False)

    def prepare(self, image: Tensor, reference: Tensor) -> Tuple[Tensor, Tensor]:
        """The pair the network sees: both resized to ``resize`` (and the reference detached).

        Raises:
            ValueError: images of different shapes, not RGB, or too small for the network.
        """
        if reference.shape != image.shape:
            raise ValueError(
                f"{self.metric} compares images of the same shape; the superimposed observation is "
                f"{tuple(reference.shape)} but the generated image is {tuple(image.shape)}"
            )
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"{self.metric} needs RGB images [B, 3, H, W]; got shape {tuple(image.shape)} "
                             f"({image.shape[1] if image.dim() > 1 else 0} channels)")
        if self.resize is None and min(image.shape[-2:]) < self.min_size:
            raise ValueError(
                f"{self.metric} needs images of at least {self.min_size}x{self.min_size} (its networks "
                f"downsample); got {tuple(image.shape[-2:])}: give {type(self).__name__} a resize (e.g. 256)"
            )
        if self.detach_reference:
            reference = reference.detach()
        if self.resize is not None and tuple(image.shape[-2:]) != (self.resize, self.resize):
            size = (self.resize, self.resize)
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
            reference = F.interpolate(reference, size=size, mode="bilinear", align_corners=False, antialias=True)
        return image, reference

    def network_distance(self, image: Tensor, reference: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The network's distance ``[B]`` between two prepared batches (same shape, same dtype)."""
        raise NotImplementedError

    def distance(self, image: Tensor, reference: Tensor) -> Tensor:
        """The distance ``[B]`` between two batches of images in ``[-1, 1]`` (after :meth:`prepare`)."""
        x, r = self.prepare(image, reference)
        return self.network_distance(x, r.to(x.dtype)).reshape(x.shape[0])

    def pair(self, ctx: LossContext) -> Tuple[Tensor, Tensor]:
        """The two images compared in this loss's ``space``: ``(generated, reference)``.

        Raises:
            ValueError: naming the operator and the shapes, when the space
                cannot compare its measurements.
        """
        op = type(ctx.operator).__name__
        if self.space != "observation":
            reference = ctx.operator.superimpose(ctx.image, ctx.observation)
            if reference is not None:
                return ctx.image, reference
            if self.space == "image":
                raise ValueError(
                    f"{self.metric} space='image' compares G(v) with an image-sized observation, but "
                    f"{op} observations are {tuple(ctx.observation.shape)} for images of "
                    f"{tuple(ctx.image.shape)} (superimpose returned None); use space='observation' "
                    "for measurements that are images of another size (super-resolution), or drop "
                    f"the '{self.loss_key}' loss weight for this operator"
                )
        measured, y = ctx.measured, ctx.observation
        if not (_is_image(measured) and measured.shape == y.shape):
            raise ValueError(
                f"{self.metric} needs image-space observations, but {op} measurements are "
                f"{tuple(measured.shape)} (observation {tuple(y.shape)}), not images [B, 3, h, w], "
                f"and superimpose gives no image to compare G(v) with; drop the '{self.loss_key}' loss weight "
                "for this operator (compressed sensing: MSE only, as the ILO authors' code)"
            )
        return measured, y

    def forward(self, ctx: LossContext) -> Tensor:
        return self.distance(*self.pair(ctx))
