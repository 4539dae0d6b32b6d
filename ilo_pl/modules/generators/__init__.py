"""Generators implementing the split protocol (:mod:`ilo_pl.modules.generators.base`)."""

from ilo_pl.modules.generators.base import SplitGenerator
from ilo_pl.modules.generators.dcgan import DCGANGenerator

__all__ = ["DCGANGenerator", "SplitGenerator"]
