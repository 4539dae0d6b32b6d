"""Generators implementing the split protocol (:mod:`ilo_pl.modules.generators.base`)."""

from ilo_pl.modules.generators.base import SplitGenerator
from ilo_pl.modules.generators.dcgan import DCGANGenerator
from ilo_pl.modules.generators.loader import checkpoint_format, load_generator, pretrained_generator
from ilo_pl.modules.generators.nvlabs import StyleGAN2ADAGenerator, StyleGAN3Generator
from ilo_pl.modules.generators.sphere import LatentSphere
from ilo_pl.modules.generators.stylegan2 import StyleGAN2Generator

# Re-exported for the imports written when the schedule lived beside StyleGAN-2; it is in ilo_pl.stages.
from ilo_pl.stages import paper_stages

__all__ = [
    "DCGANGenerator",
    "LatentSphere",
    "pretrained_generator",
    "SplitGenerator",
    "StyleGAN2ADAGenerator",
    "StyleGAN3Generator",
    "StyleGAN2Generator",
    "checkpoint_format",
    "load_generator",
    "paper_stages",
]
