"""Forward operators (see :mod:`ilo_pl.operators.base` for the contract).

Operators (``nn.Module``) and the specs that build them per problem in configs.
Every operator takes a ``noise_model`` (e.g. :class:`GaussianNoiseModel`) or
gets one with ``op.with_noise(...)``; ``ilo_pl.testing.operators.check_operator``
checks the contract on any operator.

==========================  ===========================  =====================
task                        operator                     spec
==========================  ===========================  =====================
inpainting                  :class:`Inpainting`          BoxMask, RandomMask, FileMask
denoising                   :class:`GaussianNoise`       Denoising
super-resolution            :class:`BicubicDownsample`   SuperResolution
compressed sensing          :class:`PartialCirculant`,   CompressedSensing
                            :class:`GaussianMatrix`
composition                 :class:`Compose`, Noisy      ComposeSpec
==========================  ===========================  =====================
"""

from ilo_pl.operators.base import Identity, LambdaOperator, LinearOperator, Operator, OperatorSpec, as_operator
from ilo_pl.operators.classifier import ClassGuidance, ClassifierOperator
from ilo_pl.operators.compose import Compose, ComposeSpec, LinearCompose, Noisy
from ilo_pl.operators.cs import CompressedSensing, GaussianMatrix, PartialCirculant
from ilo_pl.operators.inpainting import BoxMask, FileMask, Inpainting, RandomMask
from ilo_pl.operators.noise import Denoising, GaussianNoise, GaussianNoiseModel, NoiseModel, sigma_to_std
from ilo_pl.operators.superres import BicubicDownsample, SuperResolution, upsample_bicubic

__all__ = [
    "BicubicDownsample",
    "BoxMask",
    "ClassGuidance",
    "ClassifierOperator",
    "Compose",
    "ComposeSpec",
    "CompressedSensing",
    "Denoising",
    "FileMask",
    "GaussianMatrix",
    "GaussianNoise",
    "GaussianNoiseModel",
    "Identity",
    "Inpainting",
    "LambdaOperator",
    "LinearCompose",
    "LinearOperator",
    "NoiseModel",
    "Noisy",
    "Operator",
    "OperatorSpec",
    "PartialCirculant",
    "RandomMask",
    "SuperResolution",
    "as_operator",
    "sigma_to_std",
    "upsample_bicubic",
]
