"""Loss terms (see :mod:`ilo_pl.losses.base` for the contract).

:class:`MeasurementLoss` is the operator's own measurement error (configs
weight it as ``mse``); ``MSELoss`` is its deprecated name.
"""

from ilo_pl.losses.base import GeodesicLoss, LossContext, LossTerm, MeasurementLoss, MSELoss, ReferenceLoss
from ilo_pl.losses.classifier import ClassifierLoss
from ilo_pl.losses.lpips import LPIPSLoss

__all__ = [
    "ClassifierLoss",
    "GeodesicLoss",
    "LPIPSLoss",
    "LossContext",
    "LossTerm",
    "MSELoss",
    "MeasurementLoss",
    "ReferenceLoss",
]
