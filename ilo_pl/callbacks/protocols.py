"""What each reusable callback needs from a LightningModule, as checked protocols.

Each callback checks its protocol when the fit starts (``setup``) and refuses
a module that lacks a member with a ``TypeError`` naming the callback, the
protocol and the missing members, instead of an ``AttributeError`` deep in
a training step. Any latent-optimisation module that provides these members
can use the callbacks; :class:`~ilo_pl.modules.ilo.ILOModule` provides all of
them.

======================  ==========================================================
callback                protocol
======================  ==========================================================
``L1BallProjection``    :class:`L1Constrained`
``SphereProjection``    :class:`SphereConstrained`
``StageTransition``     :class:`Staged` (and :class:`RangeProjecting` when built
                        with ``project_to_range=True``)
``ResultWriter``,       :class:`ResultProducing`
``ResultCollector``,
``OptimizationGIF``
======================  ==========================================================
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Protocol, Tuple, Type, runtime_checkable

from torch import Tensor


@runtime_checkable
class L1Constrained(Protocol):
    """``l1_constraints() -> [(param, anchor, radius)]``: per-sample l1 balls ``||param[b] - anchor[b]||_1 <= radius[b]``."""

    def l1_constraints(self) -> Iterable[Tuple[Tensor, Tensor, Any]]: ...


@runtime_checkable
class SphereConstrained(Protocol):
    """``sphere_constraints() -> [(param, dims)]``: the norm over ``dims`` is ``sqrt(numel over dims)``."""

    def sphere_constraints(self) -> Iterable[Tuple[Tensor, Tuple[int, ...]]]: ...


@runtime_checkable
class Staged(Protocol):
    """Stages that begin at batch boundaries.

    ``stage_due(batch)``: the index of the stage that must begin before this
    batch (a new problem starts stage 0), or ``None``; ``begin_stage(batch,
    index)``: install that stage's variables. ``configure_optimizers`` must
    return an optimizer over exactly the module's trainable parameters (the
    stage's variables): it is rebuilt at every stage.
    """

    def stage_due(self, batch: Any) -> Optional[int]: ...

    def begin_stage(self, batch: Any, index: int) -> None: ...


@runtime_checkable
class RangeProjecting(Protocol):
    """``project_to_range(batch, index)``: before stage ``index``, pull the solution into the range of earlier layers."""

    def project_to_range(self, batch: Any, index: int) -> None: ...


@runtime_checkable
class ResultProducing(Protocol):
    """``last_result``: the latest finished problem batch's result (``None`` before the first)."""

    last_result: Any


#: The members of each protocol (what the error names when one is missing).
MEMBERS: Dict[type, Tuple[str, ...]] = {
    L1Constrained: ("l1_constraints",),
    SphereConstrained: ("sphere_constraints",),
    Staged: ("stage_due", "begin_stage"),
    RangeProjecting: ("project_to_range",),
    ResultProducing: ("last_result",),
}


def require(module: Any, protocol: Type[Any], callback: Any) -> None:
    """Raise a ``TypeError`` if ``module`` lacks a member of ``protocol`` that ``callback`` needs.

    Raises:
        TypeError: naming the callback, the protocol and the missing members.
    """
    if isinstance(module, protocol):
        return
    missing = [m for m in MEMBERS[protocol] if not hasattr(module, m)]
    raise TypeError(
        f"{type(callback).__name__} needs a LightningModule implementing {protocol.__name__} "
        f"(see ilo_pl.callbacks.protocols); {type(module).__name__} lacks {missing}: "
        f"{(protocol.__doc__ or '').strip().splitlines()[0]}"
    )
