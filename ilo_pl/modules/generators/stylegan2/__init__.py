"""StyleGAN-2 (config-e/f) as a :class:`~ilo_pl.modules.generators.base.SplitGenerator`.

The package is split by concern; every public name is re-exported here, so
``ilo_pl.modules.generators.stylegan2.StyleGAN2Generator`` (the ``class_path``
of the configs) and the other imports from this path keep working:

* :mod:`~ilo_pl.modules.generators.stylegan2.layers`: the network's layers
  (``PixelNorm``, ``EqualLinear``, ``ModulatedConv2d``, ``StyledConv``, ``ToRGB``, ...)
  and the choice between the modulated convolution's two forms
  (:func:`resolve_modconv_impl`, :data:`MODCONV_IMPLS`);
* :mod:`~ilo_pl.modules.generators.stylegan2.checkpoint`: reading the reference
  port's checkpoints (:func:`read_checkpoint`, :func:`infer_architecture`);
* :mod:`~ilo_pl.modules.generators.stylegan2.generator`: :class:`StyleGAN2Generator`,
  its split points and latent spaces (see that module's docstring).

The paper's schedule (:func:`~ilo_pl.stages.paper_stages`, :data:`~ilo_pl.stages.PAPER_RADII`)
lives in :mod:`ilo_pl.stages`; it is re-exported here for the imports written before it moved.
"""

from ilo_pl.modules.generators.stylegan2.checkpoint import PathLike, infer_architecture, read_checkpoint
from ilo_pl.modules.generators.stylegan2.generator import LATENT_SPACES, StyleGAN2Generator, standard_channels
from ilo_pl.modules.generators.stylegan2.layers import (
    MODCONV_IMPLS,
    Blur,
    ConstantInput,
    EqualLinear,
    ModulatedConv2d,
    NoiseInjection,
    PixelNorm,
    StyledConv,
    ToRGB,
    Upsample,
    resolve_modconv_impl,
)
from ilo_pl.stages import PAPER_RADII, paper_stages

__all__ = [
    "LATENT_SPACES",
    "MODCONV_IMPLS",
    "PAPER_RADII",
    "Blur",
    "ConstantInput",
    "EqualLinear",
    "ModulatedConv2d",
    "NoiseInjection",
    "PathLike",
    "PixelNorm",
    "StyleGAN2Generator",
    "StyledConv",
    "ToRGB",
    "Upsample",
    "infer_architecture",
    "paper_stages",
    "read_checkpoint",
    "resolve_modconv_impl",
    "standard_channels",
]
