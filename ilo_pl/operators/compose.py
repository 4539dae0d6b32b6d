"""Composition of operators: ``A = A_n o ... o A_1``, with one noise model.

``Compose(BicubicDownsample(4), GaussianNoise(25))`` is "downsample, then add
noise": its ``A`` is the downsampling (the identity ``A`` of the noise adds
nothing) and its noise model is the Gaussian one. Like every operator, a
composition has one noise model, applied to its output: the one given as
``Compose(..., noise_model=...)``, else the last part's. A noise model on any
other part would act between parts, which ``y = noise(A(x))`` cannot express,
so it is an error rather than silently dropped.

When every part is a :class:`LinearOperator` the composition is one too (the
constructor returns a :class:`LinearCompose`) with the exact adjoint
``A^T = A_1^T o ... o A_n^T``. Plain callables and ``nn.Module`` s are accepted
and wrapped with :func:`~ilo_pl.operators.base.as_operator` (they make the
composition non-linear, since their adjoint is unknown).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ilo_pl.operators.base import Identity, LinearOperator, Operator, OperatorSpec, as_operator
from ilo_pl.operators.noise import GaussianNoise

OperatorLike = Union[Operator, nn.Module, Callable[[Tensor], Tensor]]


class Compose(Operator):
    """``A(x) = A_n(...A_1(x))`` with one noise model on the output.

    Args:
        *ops: operators (or callables / ``nn.Module`` s) in the order they apply.
        noise_model: the composition's measurement noise. By default the last
            part's noise model (so ``Compose(op, GaussianNoise(25))`` is ``op``
            with Gaussian noise).

    Raises:
        ValueError: if no operator is given; if a part other than the last has
            a noise model; if both the last part and ``noise_model`` give one.
        TypeError: if a part is neither an operator nor callable, or a part
            overrides :meth:`Operator.noise` instead of having a noise model.
    """

    def __new__(cls, *ops: OperatorLike, **kwargs: object) -> "Compose":
        # Compose(...) of linear parts is a LinearCompose, so isinstance(op,
        # LinearOperator) tells the engine an adjoint exists. (No-arg calls come
        # from copy/pickle and keep the class asked for.)
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = tuple(ops[0])
        if cls is Compose and ops and all(isinstance(o, LinearOperator) for o in ops):
            cls = LinearCompose
        return super().__new__(cls)

    def __init__(self, *ops: OperatorLike, noise_model: Optional[nn.Module] = None) -> None:
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = tuple(ops[0])
        if not ops:
            raise ValueError("Compose needs at least one operator")
        for o in ops:
            if not callable(o):
                raise TypeError(f"Compose parts must be operators or callables; got {type(o).__name__}")
        parts = [as_operator(o) for o in ops]
        for i, o in enumerate(parts):
            if type(o).noise is not Operator.noise:
                # Its noise is code, not a component: the composition could not carry it.
                raise TypeError(
                    f"{type(o).__name__} at position {i} of Compose overrides Operator.noise; give its "
                    "noise as a noise model instead (noise_model=..., see ilo_pl.operators.NoiseModel)"
                )
        for i, o in enumerate(parts[:-1]):
            if o.noise_model is not None:
                raise ValueError(
                    f"{type(o).__name__} at position {i} of Compose has a noise model, but a composition "
                    "has one noise model, on its output; put the noisy operator last or give the noise "
                    "as Compose(..., noise_model=...)"
                )
        last = parts[-1].noise_model
        if noise_model is not None and last is not None:
            raise ValueError(
                f"both the last part ({type(parts[-1]).__name__}) and noise_model= give Compose a noise "
                "model; give one of them"
            )
        super().__init__(noise_model=noise_model if noise_model is not None else last)
        self.ops = nn.ModuleList(parts)

    # -- operator ---------------------------------------------------------
    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        for op in self.ops:
            x = op.A(x)
        return x

    def _measuring(self) -> Operator:
        # The part that defines the measurement space: the last one whose A is
        # not the identity (so Compose(Inpainting, GaussianNoise) keeps the
        # inpainting's masked error and superimposition).
        for op in reversed(self.ops):
            if not isinstance(op, Identity):
                return op
        return self.ops[-1]

    def measurement_error(self, Ax: Tensor, y: Tensor) -> Tensor:  # noqa: N803
        return self._measuring().measurement_error(Ax, y)

    def superimpose(self, x: Tensor, y: Tensor) -> Optional[Tensor]:
        if y.shape != x.shape:
            return None
        return self._measuring().superimpose(x, y)

    # -- batching ---------------------------------------------------------
    def _stacked(self, ops: List["Operator"]) -> "Operator":
        n = len(self.ops)
        if any(len(o.ops) != n for o in ops):
            raise ValueError("cannot batch compositions of different lengths")
        out = Compose(*[Operator.stack([o.ops[i] for o in ops]) for i in range(n)])
        # The first composition's noise model, as for any stacked operator.
        out.register_module("noise_model", self.noise_model)
        return out

    def extra_repr(self) -> str:
        return ""


class LinearCompose(Compose, LinearOperator):
    """A :class:`Compose` of linear operators, with the exact adjoint."""

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        for op in reversed(self.ops):
            y = op.A_adjoint(y)
        return y

    def least_norm_solve(self, r: Tensor, damping: Union[float, Tensor] = 0.0) -> Optional[Tensor]:
        # Identity parts (a noise stage) change nothing: the one other part's closed form is the composition's.
        parts = [op for op in self.ops if not isinstance(op, Identity)]
        if len(parts) > 1:
            return None
        return (parts[0] if parts else self.ops[-1]).least_norm_solve(r, damping)

    def gram_diagonal(self, like: Tensor) -> Optional[Tensor]:
        # As least_norm_solve: identity parts change nothing; two other parts have no closed form here.
        parts = [op for op in self.ops if not isinstance(op, Identity)]
        if len(parts) > 1:
            return None
        return (parts[0] if parts else self.ops[-1]).gram_diagonal(like)


def Noisy(operator: OperatorLike, sigma: float, clip: bool = True) -> Compose:  # noqa: N802
    """``operator`` followed by Gaussian noise of ``sigma`` (0..255 scale): ``Compose(operator, GaussianNoise(sigma))``.

    Use ``clip=False`` when the measurements are not images (compressed sensing).
    """
    return Compose(operator, GaussianNoise(sigma, clip))


def _output_shape(op: Operator, image_shape: Tuple[int, ...]) -> Tuple[int, ...]:
    with torch.no_grad():
        return tuple(op.A(torch.zeros(1, *image_shape)).shape[1:])


class ComposeSpec(OperatorSpec):
    """Spec of :class:`Compose`: builds each part for the shape the previous part outputs.

    Config (downsample by 4, then add noise of sigma 25)::

        operator:
          class_path: ilo_pl.operators.compose.ComposeSpec
          init_args:
            specs:
              - {class_path: ilo_pl.operators.superres.SuperResolution, init_args: {factor: 4}}
              - {class_path: ilo_pl.operators.noise.Denoising, init_args: {sigma: 25}}

    Every part is built with the problem's seed and name; the composition is
    shared when all parts are.

    Args:
        specs: the parts' specs, in the order they apply.
    """

    def __init__(self, specs: Sequence[OperatorSpec]) -> None:
        specs = list(specs)
        if not specs:
            raise ValueError("ComposeSpec needs at least one spec")
        for s in specs:
            if not isinstance(s, OperatorSpec):
                raise TypeError(f"ComposeSpec parts must be OperatorSpec instances; got {type(s).__name__}")
        self.specs = specs
        self.shared = all(bool(s.shared) for s in specs)

    def build(self, image_shape: Tuple[int, int, int], seed: int, name: Optional[str] = None) -> Compose:
        parts: List[Operator] = []
        shape: Tuple[int, ...] = tuple(image_shape)
        for i, spec in enumerate(self.specs):
            op = spec.build(shape, seed, name=name)  # type: ignore[arg-type]
            parts.append(op)
            if i < len(self.specs) - 1:
                shape = _output_shape(op, shape)
        return Compose(*parts)
