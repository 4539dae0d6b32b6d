"""Loss terms (see :mod:`ilo_pl.losses.base` for the contract)."""

from ilo_pl.losses.base import GeodesicLoss, LossContext, LossTerm, MSELoss, ReferenceLoss
from ilo_pl.losses.classifier import ClassifierLoss
from ilo_pl.losses.lpips import LPIPSLoss

__all__ = ["ClassifierLoss", "GeodesicLoss", "LPIPSLoss", "LossContext", "LossTerm", "MSELoss", "ReferenceLoss"]
