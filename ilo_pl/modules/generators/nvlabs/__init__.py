"""NVIDIA's StyleGAN generators (StyleGAN2-ADA, StyleGAN3) read safely from their network pickles.

* :mod:`~ilo_pl.modules.generators.nvlabs.pickle_reader`: the restricted
  unpickler (:func:`read_network_pickle`): nothing from the file is run;
* :mod:`~ilo_pl.modules.generators.nvlabs.stylegan2ada`: :class:`StyleGAN2ADAGenerator`;
* :mod:`~ilo_pl.modules.generators.nvlabs.stylegan3`: :class:`StyleGAN3Generator` (configs T and R);
* :mod:`~ilo_pl.modules.generators.nvlabs.mapping`: what both share (the mapping network, options,
  per-problem class labels, ``w_avg`` and the Gaussian fit, NVIDIA's ``G(z, c)``);
* :mod:`~ilo_pl.modules.generators.nvlabs.ops`: the reference operations in NVIDIA's conventions.
"""

from ilo_pl.modules.generators.nvlabs.pickle_reader import (
    ALLOWED_GLOBALS,
    NetworkPickleError,
    PersistentRecord,
    is_network_pickle,
    read_network_pickle,
    record_state_dict,
    take_generator,
)
from ilo_pl.modules.generators.nvlabs.stylegan2ada import StyleGAN2ADAGenerator
from ilo_pl.modules.generators.nvlabs.stylegan3 import StyleGAN3Generator

__all__ = [
    "ALLOWED_GLOBALS",
    "NetworkPickleError",
    "PersistentRecord",
    "StyleGAN2ADAGenerator",
    "StyleGAN3Generator",
    "is_network_pickle",
    "read_network_pickle",
    "record_state_dict",
    "take_generator",
]
