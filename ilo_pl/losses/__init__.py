"""Loss terms (see :mod:`ilo_pl.losses.base` for the contract).

:class:`MeasurementLoss` is the operator's own measurement error (configs
weight it as ``mse``); ``MSELoss`` is its deprecated name.
:class:`LPIPSLoss` (the ILO paper's perceptual term; needs torchvision's
ImageNet backbone weights) and :class:`STLPIPSLoss` (shift-tolerant LPIPS,
complete weights shipped in the ``stlpips-pytorch`` package: works offline)
share :class:`PerceptualLoss`'s choice of the compared images.
"""

from ilo_pl.losses.base import GeodesicLoss, LossContext, LossTerm, MeasurementLoss, MSELoss, ReferenceLoss
from ilo_pl.losses.classifier import ClassifierLoss
from ilo_pl.losses.lpips import LPIPSLoss
from ilo_pl.losses.perceptual import PerceptualLoss
from ilo_pl.losses.stlpips import STLPIPSLoss

__all__ = [
    "ClassifierLoss",
    "GeodesicLoss",
    "LPIPSLoss",
    "LossContext",
    "LossTerm",
    "MSELoss",
    "MeasurementLoss",
    "PerceptualLoss",
    "ReferenceLoss",
    "STLPIPSLoss",
]
