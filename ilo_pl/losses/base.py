"""Loss terms: per-sample objectives that ILO sums with per-stage weights.

A loss term is an ``nn.Module`` whose ``forward(ctx)`` takes a
:class:`LossContext` and returns a per-sample loss ``[B]``. The engine sums
terms with the stage's weights and sums over samples (never averages), so a
sample's gradient does not depend on how many other problems share its batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ilo_pl.operators.base import Operator
from ilo_pl.policy import no_autocast


@dataclass
class LossContext:
    """What a loss term may look at.

    Attributes:
        image: the generated image ``G2(state)`` ``[B, C, H, W]`` in ``[-1, 1]``.
        measured: the operator applied to ``image`` (with fresh measurement
            noise when Stochastic Noise Addition is on).
        observation: the observation ``y``.
        operator: the batched operator of the problems.
        state: the current state (variables and fixed entries) at ``split``.
        groups: group name of each state entry.
        split: the current split point.
        measurement_error: ``operator.measurement_error(measured, observation)``,
            computed once by the engine (``None`` outside it).
    """

    image: Tensor
    measured: Tensor
    observation: Tensor
    operator: Operator
    state: Mapping[str, Tensor]
    groups: Mapping[str, str]
    split: int
    measurement_error: Optional[Tensor] = None


class LossTerm(nn.Module):
    """Base class: ``forward(ctx) -> [B]`` per-sample loss."""

    def forward(self, ctx: LossContext) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def weighted_sum(
    terms: Mapping[str, LossTerm], weights: Sequence[Tuple[str, float]], ctx: LossContext, batch_size: int
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """The per-sample objective ``sum_i w_i * term_i(ctx)`` (float32 ``[B]``) and each term's value.

    Args:
        terms: loss terms by name.
        weights: ``(name, weight)`` of the terms to add (zero weights left out by the caller).
        ctx: what the terms look at.
        batch_size: ``B`` (the objective is zeros when no term is weighted).
    """
    total: Optional[Tensor] = None
    values: Dict[str, Tensor] = {}
    for name, weight in weights:
        term = terms[name](ctx).float()
        weighted = term if weight == 1.0 else weight * term
        total = weighted if total is None else total + weighted
        values[name] = term
    if total is None:
        total = ctx.image.new_zeros(batch_size, dtype=torch.float32)
    return total, values


class MeasurementLoss(LossTerm):
    """The operator's measurement error ``operator.measurement_error(measured, observation)``: ``[B]``.

    What it measures is the operator's to define: the mean squared error over
    the measurements (super-resolution, denoising, compressed sensing), over
    the observed pixels only (inpainting), or the cross entropy
    ``-log p(y | x)`` (classifier guidance). Inside the engine it returns the
    error the engine computed once per step (``ctx.measurement_error``).
    Configs weight it under the loss name ``mse``.
    """

    def forward(self, ctx: LossContext) -> Tensor:
        if ctx.measurement_error is not None:
            return ctx.measurement_error
        return ctx.operator.measurement_error(ctx.measured, ctx.observation)


class MSELoss(MeasurementLoss):
    """Deprecated name of :class:`MeasurementLoss` (the error is not always a squared error).

    A subclass rather than an alias, so configs and run manifests that name
    ``ilo_pl.losses.MSELoss`` keep working and keep describing the same class.
    """

    def __init__(self) -> None:
        warnings.warn(
            "ilo_pl.losses.MSELoss is deprecated: it returns the operator's measurement error, which is "
            "not always a squared error (cross entropy for a classifier); use ilo_pl.losses.MeasurementLoss",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__()


#: How :class:`GeodesicLoss` reduces the squared angles of a sample's row pairs.
GEODESIC_REDUCTIONS = ("authors", "pair_sum")

#: The authors' scale: ``512 / 8`` in PULSE's ``loss_geocross`` (``512`` is the W row width there).
_AUTHORS_SCALE = 512.0 / 8.0


class GeodesicLoss(LossTerm):
    """PULSE's cross loss: squared geodesic (angular) distances between a sample's W+ rows.

    Applies to every state entry of group ``"latent"`` shaped ``[B, rows, dim]``
    with at least two rows, at every split (the original ILO code sliced the
    batch axis and so switched this term off after the first layer). With
    ``θ_ij`` the angle between rows ``i`` and ``j`` of one sample and ``N``
    its number of rows:

    * ``reduction="authors"`` (default): ``64 · mean over the full N x N matrix
      of θ_ij²`` (the zero diagonal included), i.e. ``128 / N² · Σ_{i<j} θ_ij²``.
      This is ``loss_geocross`` of the PULSE code, which the ILO authors' code
      uses with weight 0.01: ``2·atan2(|x−y|, |x+y|)`` is ``θ`` for rows of
      equal norm, squared, times 512, averaged over the matrix, divided by 8.
      So weight 0.01 means here what it meant in the paper's experiments.
      The factor stays 64 for any row width (the authors' 512 is the width
      of FFHQ's W rows), so the term's size does not depend on ``dim``.
    * ``reduction="pair_sum"``: ``Σ_{i<j} θ_ij²``, the formula as the PULSE
      paper writes it. It is ``N² / 128`` times the authors' value: 2.53x at
      18 rows, 2.26x at 17, 1.76x at 15, 1.32x at 13; scale the weight
      accordingly.

    Angles are computed from normalised rows (``acos`` of the cosine), so they
    are angles for rows of any norm; the authors' ``atan2`` form is the angle
    only for rows of equal norm (as on the sphere, ``sphere: true``), and then
    the two agree.

    Args:
        reduction: ``"authors"`` or ``"pair_sum"`` (see above).

    Raises:
        ValueError: on an unknown ``reduction``.
    """

    def __init__(self, reduction: str = "authors") -> None:
        super().__init__()
        if reduction not in GEODESIC_REDUCTIONS:
            raise ValueError(
                f"unknown GeodesicLoss reduction {reduction!r}; use 'authors' (the ILO/PULSE code's "
                "normalisation, for which weight 0.01 is the paper's) or 'pair_sum' (the sum over pairs i < j)"
            )
        self.reduction = reduction

    def forward(self, ctx: LossContext) -> Tensor:
        total = ctx.image.new_zeros(ctx.image.shape[0])
        for name, group in ctx.groups.items():
            w = ctx.state[name]
            if group != "latent" or w.dim() != 3 or w.shape[1] < 2:
                continue
            # float32 with autocast off: in float16/bfloat16 the matmul rounds cosines near 1
            # to exactly 1, where the angle is 0 (the term silently vanishes) and acos' is
            # infinite (16-mixed: NaN gradients, so the GradScaler skips every step).
            with no_autocast(w):
                u = torch.nn.functional.normalize(w.float(), dim=-1)
                cos = (u @ u.transpose(1, 2)).clamp(-1 + 1e-7, 1 - 1e-7)
                angle = torch.acos(cos)
            rows = w.shape[1]
            iu = torch.triu_indices(rows, rows, offset=1, device=w.device)
            pair_sum = angle[:, iu[0], iu[1]].pow(2).sum(1)
            if self.reduction == "authors":
                # The mean over all N² ordered pairs counts each i<j pair twice; the diagonal is 0.
                pair_sum = pair_sum * (2.0 * _AUTHORS_SCALE / rows**2)
            total = total + pair_sum
        return total

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class ReferenceLoss(LossTerm):
    """Squared error of the generated image to a fixed reference image (e.g. a face to morph from).

    Args:
        reference: path to an image file or a ``[C, H, W]``/``[1, C, H, W]``
            tensor in ``[-1, 1]``.
    """

    def __init__(self, reference) -> None:  # noqa: ANN001 - path or tensor
        super().__init__()
        if not torch.is_tensor(reference):
            from ilo_pl.io import load_image

            reference = load_image(reference)
        if reference.dim() == 3:
            reference = reference[None]
        self.register_buffer("reference", reference.float())

    def forward(self, ctx: LossContext) -> Tensor:
        ref = self.reference
        if ref.shape[-2:] != ctx.image.shape[-2:]:
            raise ValueError(
                f"the reference image is {tuple(ref.shape[-2:])} but the generator makes "
                f"{tuple(ctx.image.shape[-2:])} images; resize the reference"
            )
        return (ctx.image - ref.to(ctx.image.dtype)).pow(2).flatten(1).mean(1)
