"""Compiled kernels, each next to its pure-PyTorch reference, chosen by a public ``impl`` argument.

* StyleGAN-2's two custom ops, ``upfirdn2d`` and the fused bias + leaky ReLU:
  ``impl="ref"`` is the pure-PyTorch path (any device; the specification),
  ``impl="cuda"`` a CUDA kernel JIT-compiled with ninja the first time it
  runs (never at import; see :mod:`ilo_pl.ops._cuda`), and ``impl="auto"``
  (the default) the CUDA kernel on CUDA tensors where it builds, else the
  reference. Half/bfloat16 inputs and autocast regions are computed in
  float32.
* The CPU kernel of the exact in-place l1-ball projection,
  ``impl="kernel"`` of :func:`ilo_pl.projections.project_l1_ball_` (see
  :mod:`ilo_pl.ops._cpu`).

An explicit ``impl`` that cannot run on its input raises; only ``"auto"``
falls back. ``ILO_PL_OPS=native`` makes ``"auto"`` pick the pure-PyTorch
paths; it does not change an explicit ``impl``.
"""

from ilo_pl.ops._cuda import OP_IMPLS
from ilo_pl.ops.fused_act import FusedLeakyReLU, fused_leaky_relu, fused_leaky_relu_native
from ilo_pl.ops.upfirdn2d import upfirdn2d, upfirdn2d_native

__all__ = [
    "OP_IMPLS",
    "FusedLeakyReLU",
    "fused_leaky_relu",
    "fused_leaky_relu_native",
    "upfirdn2d",
    "upfirdn2d_native",
]
