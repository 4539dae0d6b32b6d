"""Forward operators: the contract every measurement model follows.

In the style of deepinv's physics:

* :meth:`Operator.A` -- the noiseless forward map ``x -> A(x)``; batched
  (``x`` is ``[B, C, H, W]`` in ``[-1, 1]``), differentiable, on the device of
  its buffers. This is what sits inside the loss.
* :meth:`Operator.noise` -- the measurement noise model applied to ``A(x)``
  (identity unless the operator says otherwise).
* :meth:`Operator.forward` -- ``y = noise(A(x))``: how observations are *made*
  (always with the same ``A`` that sits in the loss).
* :meth:`LinearOperator.A_adjoint` -- the exact adjoint of a linear ``A``.

Per-sample parameters (masks, seeds) are buffers whose leading dim is the
batch; :meth:`Operator.stack` concatenates one-sample operators into one
batched operator so the per-step path has no Python loop over samples.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


class Operator(nn.Module):
    """Base class of forward operators ``y = noise(A(x))``.

    Attributes:
        batched_buffers: names of buffers with a per-sample leading dim;
            :meth:`stack` concatenates them along dim 0.
    """

    batched_buffers: Tuple[str, ...] = ()

    def A(self, x: Tensor) -> Tensor:  # noqa: N802 (deepinv naming)
        """The noiseless forward map. Subclasses override."""
        raise NotImplementedError(f"{type(self).__name__} does not define A(x)")

    def noise(self, y: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Measurement noise applied to ``A(x)`` when observations are made."""
        return y

    def forward(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Make an observation ``y = noise(A(x))`` (seeded by ``generator``)."""
        self.check_image(x)
        return self.noise(self.A(x), generator)

    def measurement_error(self, Ax: Tensor, y: Tensor) -> Tensor:  # noqa: N803
        """Per-sample squared error in measurement space, averaged over entries: ``[B]``."""
        return (Ax - y).pow(2).flatten(1).mean(1)

    def superimpose(self, x: Tensor, y: Tensor) -> Tensor:
        """The image the perceptual loss compares ``x`` against.

        For operators in image space this is the observation itself; for
        inpainting, the observation with unobserved pixels taken from ``x``.
        Operators whose measurements are not images return ``None``.
        """
        return y if y.shape == x.shape else None

    # -- validation -------------------------------------------------------
    def check_image(self, x: Tensor) -> None:
        """Raise a ``ValueError`` if ``x`` is not a ``[B, C, H, W]`` float tensor."""
        if not torch.is_tensor(x) or x.dim() != 4 or not x.is_floating_point():
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__} expects images as a float tensor [B, C, H, W]; got {got}"
            )

    def check_observation(self, y: Tensor, x_like: Tensor) -> None:
        """Check that ``y`` is finite and has the shape ``A`` produces for ``x_like``.

        Raises:
            ValueError: naming the problem (NaN/inf, or the shape mismatch).
        """
        if y.is_floating_point() and not torch.isfinite(y).all():
            raise ValueError(
                "the observation contains NaN or inf values; clean or mask them before solving"
            )
        with torch.no_grad():
            expected = self.A(x_like).shape
        if tuple(y.shape) != tuple(expected):
            raise ValueError(
                f"operator {type(self).__name__} produces measurements of shape {tuple(expected)} "
                f"but the observation has shape {tuple(y.shape)}; use the operator that made y"
            )

    # -- batching ---------------------------------------------------------
    @classmethod
    def stack(cls, ops: Sequence["Operator"]) -> "Operator":
        """Merge per-sample operators (each with batch dim 1) into one batched operator.

        Buffers listed in :attr:`batched_buffers` are concatenated along dim 0;
        every other buffer and attribute is taken from the first operator and
        must be the same in all (shared parameters).
        """
        ops = list(ops)
        if not ops:
            raise ValueError("Operator.stack needs at least one operator")
        first = ops[0]
        if len(ops) == 1:
            return first
        if any(type(o) is not type(first) for o in ops):
            raise ValueError(
                "cannot batch operators of different types: "
                + ", ".join(sorted({type(o).__name__ for o in ops}))
            )
        return first._stacked(ops)

    def _stacked(self, ops: List["Operator"]) -> "Operator":
        import copy

        out = copy.copy(self)
        out._buffers = dict(self._buffers)  # shallow copies share modules; own buffer dict
        for name in self.batched_buffers:
            out._buffers[name] = torch.cat([getattr(o, name) for o in ops], 0)
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={tuple(getattr(self, n).shape)}" for n in self.batched_buffers)


class LinearOperator(Operator):
    """An operator whose ``A`` is linear; it also provides the exact adjoint."""

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        """The adjoint ``A^T y``. Subclasses override."""
        raise NotImplementedError(f"{type(self).__name__} does not define A_adjoint(y)")


class Identity(LinearOperator):
    """``A = I``: the fully observed case."""

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        return y


class LambdaOperator(Operator):
    """Wrap any callable or ``nn.Module`` ``f`` as an operator with ``A = f``."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"LambdaOperator needs a callable, got {type(fn).__name__}")
        self.fn = fn

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        return self.fn(x)


def as_operator(op: "Operator | Callable[[Tensor], Tensor]") -> Operator:
    """Return ``op`` if it is an :class:`Operator`, else wrap the callable."""
    return op if isinstance(op, Operator) else LambdaOperator(op)


class OperatorSpec:
    """Describes how to build the operator of one problem.

    Specs are what configs name (``operator: {class_path: ..., init_args:
    ...}``); the data module calls :meth:`build` once per problem with that
    problem's seed, so random operators (masks, sign patterns, noise) are
    reproducible, and then :meth:`Operator.stack` batches them.
    """

    def build(self, image_shape: Tuple[int, int, int], seed: int) -> Operator:
        """The operator for one image of shape ``(C, H, W)`` (its buffers have batch dim 1)."""
        raise NotImplementedError(f"{type(self).__name__} does not define build()")

    #: Whether all problems share one operator (built with the spec's own seed).
    shared: bool = False

    def observe(self, op: Operator, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The observation of ground truth ``x`` (``[1, C, H, W]``): ``op(x)`` with seeded noise.

        Specs whose observation is not a measurement of ``x`` (a target class)
        override this.
        """
        return op(x, generator)
