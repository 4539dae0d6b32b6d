"""Forward operators: the contract every measurement model follows.

In the style of deepinv's physics:

* :meth:`Operator.A` -- the noiseless forward map ``x -> A(x)``; batched
  (``x`` is ``[B, C, H, W]`` in ``[-1, 1]``), differentiable, on the device of
  its buffers. This is what sits inside the loss.
* :attr:`Operator.noise_model` -- the measurement noise, a component of the
  operator (``None``: noiseless). It is given at construction
  (``Inpainting(mask, noise_model=GaussianNoiseModel(10))``) or swapped with
  :meth:`Operator.with_noise`, which returns a new operator.
* :meth:`Operator.noise` -- applies the noise model to ``A(x)`` (the identity
  without one).
* :meth:`Operator.forward` -- ``y = noise(A(x))``: how observations are *made*
  (always with the same ``A`` that sits in the loss).
* :meth:`LinearOperator.A_adjoint` -- the exact adjoint of a linear ``A``;
  :meth:`LinearOperator.adjointness_test` and
  :meth:`LinearOperator.compute_sqnorm` check it and measure ``||A||^2``.

Per-sample parameters (masks, seeds) are buffers whose leading dim is the
batch; :meth:`Operator.stack` concatenates one-sample operators into one
batched operator so the per-step path has no Python loop over samples.

:func:`ilo_pl.testing.operators.check_operator` checks the whole contract on
any operator, a user's own included.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn


def check_noise_model(noise_model: Optional[nn.Module]) -> Optional[nn.Module]:
    """Return ``noise_model`` if it can be an operator's noise model, else raise.

    A noise model is an ``nn.Module`` called as ``noise_model(y, generator)``
    (see :class:`~ilo_pl.operators.noise.NoiseModel`); ``None`` means noiseless.

    Raises:
        TypeError: if ``noise_model`` is neither ``None`` nor an ``nn.Module``.
    """
    if noise_model is None or isinstance(noise_model, nn.Module):
        return noise_model
    raise TypeError(
        f"a noise model must be an nn.Module called as noise_model(y, generator) (subclass "
        f"ilo_pl.operators.NoiseModel), or None for no noise; got {type(noise_model).__name__}"
    )


def _draw(
    shape: Sequence[int], generator: Optional[torch.Generator], dtype: torch.dtype, device: torch.device
) -> Tensor:
    # Drawn on the generator's device, then moved: a seed gives the same draw on
    # every device. The default is a private generator, so diagnostics never
    # consume the global RNG (which would shift a seeded run's later draws).
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    return torch.randn(tuple(shape), generator=g, device=g.device, dtype=dtype).to(device)


def per_sample(value: Union[float, Tensor], like: Tensor) -> Tensor:
    """A number or a per-sample ``[B]`` tensor, shaped to broadcast against ``like`` ``[B, ...]``."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.view(-1, *([1] * (like.dim() - 1))) if t.dim() else t


def _row_norm(v: Tensor) -> Tensor:
    """Per-sample Euclidean norm ``[B, 1, ...]`` (broadcastable against ``v``)."""
    n = v.flatten(1).norm(dim=1)
    return n.view(-1, *([1] * (v.dim() - 1)))


class Operator(nn.Module):
    """Base class of forward operators ``y = noise(A(x))``.

    Args:
        noise_model: the measurement noise, an ``nn.Module`` called as
            ``noise_model(y, generator)`` (e.g.
            :class:`~ilo_pl.operators.noise.GaussianNoiseModel`); ``None``
            (default) for noiseless measurements.

    Attributes:
        batched_buffers: names of buffers with a per-sample leading dim;
            :meth:`stack` concatenates them along dim 0.
        noise_model: the noise model (``None``: noiseless). It is a child
            module, so ``.to(device)`` moves it with the operator.

    Raises:
        TypeError: if ``noise_model`` is neither ``None`` nor an ``nn.Module``.
    """

    batched_buffers: Tuple[str, ...] = ()

    def __init__(self, noise_model: Optional[nn.Module] = None) -> None:
        super().__init__()
        # Registered as a child even when None, so it never lands in __dict__
        # (run manifests describe a module by the init arguments found there).
        self.register_module("noise_model", check_noise_model(noise_model))

    def A(self, x: Tensor) -> Tensor:  # noqa: N802 (deepinv naming)
        """The noiseless forward map. Subclasses override."""
        raise NotImplementedError(f"{type(self).__name__} does not define A(x)")

    def noise(self, y: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Apply the noise model to a measurement ``y`` (``y`` itself when there is none).

        With a seeded ``generator`` the noise is reproducible; without one it is
        fresh at every call (what Stochastic Noise Addition needs).
        """
        if self.noise_model is None:
            return y
        return self.noise_model(y, generator)

    def with_noise(self, noise_model: Optional[nn.Module]) -> "Operator":
        """A new operator with the same ``A`` and ``noise_model`` as its noise (``None``: noiseless).

        ``self`` is unchanged: operators may be shared between problems (a
        shared spec builds one), so the noise is never swapped in place. The
        copy shares ``self``'s buffers, parameters and child modules.

        Raises:
            TypeError: if ``noise_model`` is neither ``None`` nor an ``nn.Module``.
        """
        noise_model = check_noise_model(noise_model)
        out = copy.copy(self)
        # Own registries, so registering the new noise model leaves self's alone.
        out._modules = dict(self._modules)
        out._buffers = dict(self._buffers)
        out._parameters = dict(self._parameters)
        out.register_module("noise_model", noise_model)
        return out

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

    def start_report(self, start: Tensor, final: Tensor, y: Tensor) -> Optional[Dict[str, Tensor]]:
        """Per-sample numbers that judge a result against the image its solve started from, or ``None``.

        For tasks without a ground truth to compare with (classifier guidance:
        the result should stay close to its start while the measurement
        changes). :class:`~ilo_pl.callbacks.ResultWriter` writes the values
        into ``results.csv`` (columns of the same names) and shows the start
        image in the grid. Default ``None``: the task is judged against its
        ground truth.

        Args:
            start: the start images ``[B, C, H, W]`` (stage 0's initial variables, rendered).
            final: the results ``[B, C, H, W]``.
            y: the observations.
        """
        return None

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
        every other buffer and attribute, the noise model included, is taken
        from the first operator and must be the same in all (shared parameters).
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
        out = copy.copy(self)
        out._buffers = dict(self._buffers)  # shallow copies share modules; own buffer dict
        for name in self.batched_buffers:
            out._buffers[name] = torch.cat([getattr(o, name) for o in ops], 0)
        return out

    def _stack_size(self) -> int:
        """The number of per-problem parameter sets held (1 for a shared operator)."""
        sizes = [
            getattr(m, name).shape[0]
            for m in self.modules()
            if isinstance(m, Operator)
            for name in m.batched_buffers
        ]
        return max(sizes, default=1)

    def _device(self) -> torch.device:
        """The device of the operator's first buffer or parameter (the CPU when it has none)."""
        for t in list(self.buffers()) + list(self.parameters()):
            return t.device
        return torch.device("cpu")

    def _input_shape(self, shape: Sequence[int]) -> Tuple[int, ...]:
        """``(B, C, H, W)`` from ``(C, H, W)`` (``B`` = :meth:`_stack_size`) or ``(B, C, H, W)``."""
        shape = tuple(int(s) for s in shape)
        if len(shape) == 3:
            return (self._stack_size(), *shape)
        if len(shape) == 4:
            return shape
        raise ValueError(
            f"shape must be an image shape (C, H, W) or a batch shape (B, C, H, W); got {shape}"
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={tuple(getattr(self, n).shape)}" for n in self.batched_buffers)


class LinearOperator(Operator):
    """An operator whose ``A`` is linear; it also provides the exact adjoint."""

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        """The adjoint ``A^T y``. Subclasses override."""
        raise NotImplementedError(f"{type(self).__name__} does not define A_adjoint(y)")

    def least_norm_solve(self, r: Tensor, damping: Union[float, Tensor] = 0.0) -> Optional[Tensor]:
        """A closed form of ``A^T (A A^T + damping I)^+ r``, or ``None`` where there is none (the default).

        That is the least-norm minimiser of ``||A d - r||^2 + damping ||d||^2``
        (``damping >= 0``, a number or one per sample ``[B]``): the measurement-
        consistency step (:mod:`ilo_pl.operators.consistency`), which solves it
        by conjugate gradients when this returns ``None``. Override it where
        ``A A^T`` is diagonal (masks, the identity).
        """
        return None

    def gram_diagonal(self, like: Tensor) -> Optional[Tensor]:
        """``diag(A A^T)`` (the squared norms of ``A``'s rows) shaped like ``A(like)``, or ``None`` (the default).

        ``like`` is a batch of images ``[B, C, H, W]`` giving the shape, dtype
        and device. The measurement-consistency step (:mod:`ilo_pl.operators.consistency`)
        uses it for ``tr(A A^T)`` and for clipped noise, and estimates it with
        random probes when this returns ``None``. Override it where it has a
        cheap closed form (ilo-pl's operators all do).
        """
        return None

    @torch.no_grad()
    def adjointness_test(
        self,
        shape: Sequence[int],
        generator: Optional[torch.Generator] = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: Optional[torch.device] = None,
    ) -> Tensor:
        """Relative adjointness error ``|<A x, y> - <x, A^T y>| / max(||A x|| ||y||, ||x|| ||A^T y||)``.

        ``x`` (of ``shape``) and ``y`` (of ``A(x)``'s shape) are standard normal
        draws. The error is at the rounding level of ``dtype`` (about ``1e-16``
        in float64) when :meth:`A_adjoint` is the exact adjoint. The
        denominator bounds both inner products (Cauchy-Schwarz), so the value
        is scale-free and defined even when the inner products are close to 0;
        random inner products are themselves about ``1/sqrt(m)`` of that bound
        (``m`` measurements), so a wrong adjoint gives an error of that order:
        far above rounding, but not of order 1.

        Args:
            shape: ``(C, H, W)`` of the images (the batch is the operator's
                number of per-problem parameter sets) or ``(B, C, H, W)``.
            generator: the random stream of ``x`` and ``y``; by default a
                private one seeded with 0, so the result is reproducible and the
                global RNG is left alone.
            dtype: the dtype of ``x`` and ``y`` (ilo-pl's operators compute in
                their input's dtype).
            device: where ``x`` and ``y`` live (default: the operator's device).

        Returns:
            A 0-d tensor of ``dtype``.

        Raises:
            ValueError: if ``A_adjoint`` does not map measurements back to the images' shape.

        Example:
            >>> from ilo_pl.operators import BicubicDownsample
            >>> float(BicubicDownsample(2).adjointness_test((3, 8, 8))) < 1e-12
            True
        """
        device = self._device() if device is None else torch.device(device)
        x = _draw(self._input_shape(shape), generator, dtype, device)
        ax = self.A(x)
        y = _draw(ax.shape, generator, ax.dtype, device)
        aty = self.A_adjoint(y)
        if tuple(aty.shape) != tuple(x.shape):
            raise ValueError(
                f"{type(self).__name__}.A_adjoint returns shape {tuple(aty.shape)} for measurements of "
                f"shape {tuple(y.shape)}, but the images are {tuple(x.shape)}; A_adjoint must map "
                "measurements back to image space"
            )
        lhs = (ax * y).sum()
        rhs = (x * aty).sum()
        scale = torch.maximum(ax.norm() * y.norm(), x.norm() * aty.norm())
        return (lhs - rhs).abs() / scale.clamp_min(torch.finfo(scale.dtype).tiny)

    @torch.no_grad()
    def compute_sqnorm(
        self,
        shape: Sequence[int],
        max_iter: int = 100,
        tol: float = 1e-6,
        generator: Optional[torch.Generator] = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: Optional[torch.device] = None,
    ) -> Tensor:
        """The squared operator norm ``||A||_2^2`` per problem, by power iteration on ``A^T A``.

        ``||A||_2^2`` is the largest eigenvalue of ``A^T A`` (the largest
        squared singular value of ``A``): the Lipschitz constant of the
        gradient of ``||A x - y||^2 / 2``. Starting from a standard normal
        ``v``, each iteration sets ``w = A^T A v``, the estimate to the
        Rayleigh quotient ``<v, w>`` (``||v|| = 1``) and ``v = w / ||w||``, and
        stops when no estimate changed by more than ``tol`` relative to itself.
        Each problem of a stacked operator is iterated on its own. The estimate
        approaches the norm from below; how fast depends on the gap between the
        two largest singular values.

        Args:
            shape: ``(C, H, W)`` of the images (the batch is the operator's
                number of per-problem parameter sets) or ``(B, C, H, W)``.
            max_iter: the most iterations.
            tol: the relative change of the estimate at which to stop.
            generator: the random stream of the start vector; by default a
                private one seeded with 0.
            dtype: the dtype the iteration runs in.
            device: where it runs (default: the operator's device).

        Returns:
            ``[B]``: one squared norm per problem (``[1]`` for a shared operator).

        Raises:
            ValueError: if ``max_iter < 1`` or ``tol < 0``.

        Example:
            >>> import torch
            >>> from ilo_pl.operators import Inpainting
            >>> Inpainting(torch.tensor([[1.0, 0.0], [1.0, 1.0]])).compute_sqnorm((1, 2, 2))
            tensor([1.], dtype=torch.float64)
        """
        if int(max_iter) < 1 or not tol >= 0:
            raise ValueError(f"compute_sqnorm needs max_iter >= 1 and tol >= 0; got max_iter={max_iter}, tol={tol}")
        device = self._device() if device is None else torch.device(device)
        v = _draw(self._input_shape(shape), generator, dtype, device)
        tiny = torch.finfo(dtype).tiny
        v = v / _row_norm(v).clamp_min(tiny)
        estimate: Optional[Tensor] = None
        for _ in range(int(max_iter)):
            w = self.A_adjoint(self.A(v))
            new = (v * w).flatten(1).sum(1)
            v = w / _row_norm(w).clamp_min(tiny)
            done = estimate is not None and bool(((new - estimate).abs() <= tol * new.abs()).all())
            estimate = new
            if done:
                break
        return estimate


class Identity(LinearOperator):
    """``A = I``: the fully observed case (with ``noise_model``: denoising).

    Args:
        noise_model: the measurement noise (``None``: noiseless).
    """

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        return x

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        return y

    def least_norm_solve(self, r: Tensor, damping: Union[float, Tensor] = 0.0) -> Tensor:
        return r / (1 + per_sample(damping, r))  # A A^T = I

    def gram_diagonal(self, like: Tensor) -> Tensor:
        return torch.ones_like(like)


class LambdaOperator(Operator):
    """Wrap any callable or ``nn.Module`` ``f`` as an operator with ``A = f``.

    Args:
        fn: the forward map ``[B, C, H, W] -> measurements``.
        noise_model: the measurement noise (``None``: noiseless).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], *, noise_model: Optional[nn.Module] = None) -> None:
        super().__init__(noise_model=noise_model)
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
    problem's seed and name, so random operators (masks, sign patterns,
    noise) are reproducible, and then :meth:`Operator.stack` batches them.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The data module calls build(shape, seed, name=...): refuse a spec that cannot take it
        # when it is defined, naming the fix, not with a TypeError in the middle of a run.
        super().__init_subclass__(**kwargs)
        build = cls.__dict__.get("build")
        if build is not None and "name" not in inspect.signature(build).parameters:
            raise TypeError(
                f"{cls.__qualname__}.build must accept the problem's name: define it as "
                "`build(self, image_shape, seed, name=None)` (name may be ignored)"
            )

    def build(self, image_shape: Tuple[int, int, int], seed: int, name: Optional[str] = None) -> Operator:
        """The operator for one image of shape ``(C, H, W)`` (its buffers have batch dim 1).

        Args:
            image_shape: ``(C, H, W)`` of the problem's image.
            seed: the problem's seed (shared specs use their own).
            name: the problem's name (its image file name), for specs that read
                per-problem files; others ignore it. Every spec accepts it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define build()")

    #: Whether all problems share one operator (built with the spec's own seed).
    shared: bool = False

    #: Whether a problem's data image is its ground truth (what the result is compared with:
    #: ``<id>_target.png``, true MSE, PSNR, SSIM). ``False`` for specs whose observation does
    #: not measure the data image (classifier guidance: the target class).
    ground_truth: bool = True

    def observe(self, op: Operator, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The observation of ground truth ``x`` (``[1, C, H, W]``): ``op(x)`` with seeded noise.

        Specs whose observation is not a measurement of ``x`` (a target class)
        override this.
        """
        return op(x, generator)
