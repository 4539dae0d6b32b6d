"""Loss terms: per-sample objectives that ILO sums with per-stage weights.

A loss term is an ``nn.Module`` whose ``forward(ctx)`` takes a
:class:`LossContext` and returns a per-sample loss ``[B]``. The engine sums
terms with the stage's weights and sums over samples (never averages), so a
sample's gradient does not depend on how many other problems share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import torch
from torch import Tensor, nn

from ilo_pl.operators.base import Operator
from ilo_pl.ops._cuda import no_autocast


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


class MSELoss(LossTerm):
    """Measurement-space squared error, as the operator defines it (``operator.measurement_error``)."""

    def forward(self, ctx: LossContext) -> Tensor:
        if ctx.measurement_error is not None:
            return ctx.measurement_error
        return ctx.operator.measurement_error(ctx.measured, ctx.observation)


class GeodesicLoss(LossTerm):
    """Sum of squared angles between all pairs of W+ rows (PULSE's cross loss).

    Applies to every state entry of group ``"latent"`` shaped ``[B, rows, dim]``
    with at least two rows, at every split (the original ILO code sliced the
    batch axis and so switched this term off after the first layer).
    """

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
            iu = torch.triu_indices(w.shape[1], w.shape[1], offset=1, device=w.device)
            total = total + angle[:, iu[0], iu[1]].pow(2).sum(1)
        return total


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
