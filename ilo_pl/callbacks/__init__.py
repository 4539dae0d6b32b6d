"""Reusable callbacks for latent optimisation (each documents the small protocol it needs)."""

from ilo_pl.callbacks.progress import OptimizationGIF, ProblemProgressBar, ProblemTQDMProgressBar
from ilo_pl.callbacks.projection import L1BallProjection, SphereProjection
from ilo_pl.callbacks.stage import StageTransition, rebuild_optimizers
from ilo_pl.callbacks.writer import ResultCollector, ResultWriter

__all__ = [
    "L1BallProjection",
    "OptimizationGIF",
    "ProblemProgressBar",
    "ProblemTQDMProgressBar",
    "ResultCollector",
    "ResultWriter",
    "SphereProjection",
    "StageTransition",
    "rebuild_optimizers",
]
