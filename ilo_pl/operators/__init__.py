"""Forward operators (see :mod:`ilo_pl.operators.base` for the contract)."""

from ilo_pl.operators.base import Identity, LambdaOperator, LinearOperator, Operator, OperatorSpec, as_operator
from ilo_pl.operators.inpainting import BoxMask, FileMask, Inpainting, RandomMask

__all__ = [
    "BoxMask",
    "FileMask",
    "Identity",
    "Inpainting",
    "LambdaOperator",
    "LinearOperator",
    "Operator",
    "OperatorSpec",
    "RandomMask",
    "as_operator",
]
