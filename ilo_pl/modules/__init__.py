"""LightningModules and generators."""

from ilo_pl.modules.ilo import ILOModule

__all__ = ["ILOModule"]
