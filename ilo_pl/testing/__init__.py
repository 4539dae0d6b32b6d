"""Contract checks for your own generators and operators (the ones ilo-pl's tests run on its own).

* :func:`check_split_generator` / :class:`SplitGeneratorContract`: the split
  protocol (``G2 ∘ G1 == G`` at every split, batch == per-sample, seeded
  draws, frozen, groups, spheres, autocast); see ``docs/stylegan2.md``.
* :func:`check_operator`: shapes, batch == per-sample, adjointness of linear
  operators, float64 gradcheck, noise; see ``docs/operators.md``.

Each raises an ``AssertionError`` that names the property that failed.
"""

from ilo_pl.testing.generators import PROPERTIES as GENERATOR_PROPERTIES
from ilo_pl.testing.generators import ContractViolation, SplitGeneratorContract, check_property, check_split_generator
from ilo_pl.testing.operators import PROPERTIES as OPERATOR_PROPERTIES
from ilo_pl.testing.operators import check_operator

__all__ = [
    "ContractViolation",
    "GENERATOR_PROPERTIES",
    "OPERATOR_PROPERTIES",
    "SplitGeneratorContract",
    "check_operator",
    "check_property",
    "check_split_generator",
]
