"""Compiled kernels, each with a pure-PyTorch fallback.

* StyleGAN-2's two custom ops, ``upfirdn2d`` and the fused bias + leaky ReLU:
  a pure-PyTorch path (CPU, and the fallback everywhere) and a CUDA kernel
  JIT-compiled with ninja the first time an op sees a GPU tensor (never at
  import; see :mod:`ilo_pl.ops._cuda`). Half/bfloat16 inputs and autocast
  regions are computed in float32.
* The CPU kernel of the exact in-place l1-ball projection, used by
  :func:`ilo_pl.projections.project_l1_ball_` (see :mod:`ilo_pl.ops._cpu`).
"""

from ilo_pl.ops.fused_act import FusedLeakyReLU, fused_leaky_relu, fused_leaky_relu_native
from ilo_pl.ops.upfirdn2d import upfirdn2d, upfirdn2d_native

__all__ = ["FusedLeakyReLU", "fused_leaky_relu", "fused_leaky_relu_native", "upfirdn2d", "upfirdn2d_native"]
