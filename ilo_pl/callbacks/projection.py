"""Projection callbacks: keep variables inside their constraint sets after every real step.

Both callbacks attach a ``torch.optim`` *step post-hook* to the trainer's
optimizers, so a projection runs exactly once per real optimizer step: not on
gradient-accumulation micro-batches (no step happens) and not when a
mixed-precision ``GradScaler`` skips a step with inf/NaN gradients (it does
not call ``optimizer.step``). Whenever the optimizer object changes (a stage
transition rebuilds it), the hook is registered on the new one in
``on_before_optimizer_step``, right before its first step, so the callbacks
work in any order relative to the callback that rebuilds it.

Protocol (what a LightningModule offers to use them; reusable by any
latent-optimisation project):

* ``l1_constraints() -> Iterable[(param, anchor, radius)]``: ``param`` and
  ``anchor`` are ``[B, ...]`` tensors, ``radius`` a float or ``[B]`` tensor;
  after each step ``||param[b] - anchor[b]||_1 <= radius[b]``.
* ``sphere_constraints() -> Iterable[(param, dims)]``: after each step the norm
  of ``param`` over ``dims`` is ``sqrt(numel over dims)``.

Spheres are projected before l1 balls when both are present (register
:class:`SphereProjection` first), so the l1 constraint always holds exactly.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, Optional

import pytorch_lightning as pl
import torch

from ilo_pl.callbacks.protocols import L1Constrained, SphereConstrained, require
from ilo_pl.policy import check_impl
from ilo_pl.policy import host_reads_free
from ilo_pl.projections import L1_IMPLS, L1Workspace, project_l1_ball_, project_sphere_


class _StepHookCallback(pl.Callback):
    """Registers :meth:`project` as a step post-hook on every optimizer the trainer holds."""

    def __init__(self) -> None:
        super().__init__()
        self._handles: Dict[int, Any] = {}
        self._module_ref: Callable[[], Any] = lambda: None
        #: Number of projections performed (one per real optimizer step).
        self.calls = 0

    def _attach(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._module_ref = weakref.ref(pl_module)
        live = {id(o) for o in trainer.optimizers}
        for key in [k for k in self._handles if k not in live]:
            self._handles.pop(key).remove()
        for opt in trainer.optimizers:
            if id(opt) not in self._handles:
                self._handles[id(opt)] = opt.register_step_post_hook(self._hook)

    def _hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        module = self._module_ref()
        if module is not None:
            self.calls += 1
            self.project(module)

    #: The protocol the module must implement (checked in ``setup``).
    protocol: type = object

    def project(self, pl_module: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        require(pl_module, self.protocol, self)

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._attach(trainer, pl_module)

    def on_before_optimizer_step(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        # Right before each real step, after every callback's on_train_batch_start: an optimizer
        # rebuilt there (a new stage, StageTransition) gets the hook whatever the callbacks' order.
        if id(optimizer) not in self._handles:
            self._attach(trainer, pl_module)

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        for h in self._handles.values():
            h.remove()
        self._handles.clear()


class L1BallProjection(_StepHookCallback):
    """Project each sample's deviation from its anchor onto its l1 ball after every real step.

    The projection is the exact Euclidean one (see :func:`ilo_pl.projections.project_l1_ball`).
    The module provides ``l1_constraints()`` (see the module docstring).

    Args:
        host_reads: whether the projection may read values back to the host
            (see :class:`~ilo_pl.projections.L1Workspace`). Default: where
            reads are free (:func:`ilo_pl.policy.host_reads_free`: CPU
            tensors; the compiled kernel, an inf/NaN sample raises), not on
            accelerators, where a read would stall the device's queue every
            step (an inf/NaN sample is left for the engine's failure masking).
        impl: the threshold method, passed to
            :func:`~ilo_pl.projections.project_l1_ball_` (``"auto"``,
            ``"kernel"``, ``"newton"`` or ``"sort"``; without host reads only
            ``"auto"`` and ``"sort"`` run).
    """

    protocol = L1Constrained

    def __init__(self, host_reads: Optional[bool] = None, impl: str = "auto") -> None:
        super().__init__()
        check_impl("L1BallProjection", impl, L1_IMPLS)
        self.host_reads = host_reads
        self.impl = impl
        # One workspace per constrained tensor (buffers + the last thresholds, the
        # next step's warm start); keyed by identity, dropped with the optimizer.
        self._workspaces: Dict[int, L1Workspace] = {}

    def _attach(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._workspaces.clear()  # a new optimizer means new variables (a new stage)
        super()._attach(trainer, pl_module)

    def project(self, pl_module: Any) -> None:
        for param, anchor, radius in pl_module.l1_constraints():
            ws = self._workspaces.get(id(param))
            if ws is None or ws.anchor is not anchor:
                if param.dim() < 2:
                    # A [n] tensor would be read as n samples of one entry each, each in its own ball.
                    raise ValueError(
                        f"L1BallProjection: l1_constraints() gave a parameter of shape {tuple(param.shape)}; "
                        "it must be [B, ...] with one row per sample (for one sample: param[None], shape [1, n])"
                    )
                reads = host_reads_free(param) if self.host_reads is None else self.host_reads
                ws = self._workspaces[id(param)] = L1Workspace(anchor, host_reads=reads)
            project_l1_ball_(param.data, anchor, radius, ws, impl=self.impl)


class SphereProjection(_StepHookCallback):
    """Rescale sphere-constrained variables (latents, noise maps) after every real step.

    The module provides ``sphere_constraints()`` (see the module docstring).
    """

    protocol = SphereConstrained

    def project(self, pl_module: Any) -> None:
        for param, dims in pl_module.sphere_constraints():
            project_sphere_(param.data, dims)
