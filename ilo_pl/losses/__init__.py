"""Loss terms (see :mod:`ilo_pl.losses.base` for the contract)."""

from ilo_pl.losses.base import GeodesicLoss, LossContext, LossTerm, MSELoss, ReferenceLoss

__all__ = ["GeodesicLoss", "LossContext", "LossTerm", "MSELoss", "ReferenceLoss"]
