"""Generators implementing the split protocol (:mod:`ilo_pl.modules.generators.base`)."""

from ilo_pl.modules.generators.base import SplitGenerator
from ilo_pl.modules.generators.dcgan import DCGANGenerator
from ilo_pl.modules.generators.stylegan2 import StyleGAN2Generator, paper_stages

__all__ = ["DCGANGenerator", "SplitGenerator", "StyleGAN2Generator", "paper_stages"]
