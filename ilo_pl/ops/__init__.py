"""StyleGAN-2's two custom ops: ``upfirdn2d`` and the fused bias + leaky ReLU.

Each has a pure-PyTorch path (CPU, and the fallback everywhere) and a CUDA
kernel that is JIT-compiled with ninja the first time the op sees a GPU
tensor (never at import; see :mod:`ilo_pl.ops._cuda`). Half/bfloat16 inputs
and autocast regions are computed in float32.
"""

from ilo_pl.ops.fused_act import FusedLeakyReLU, fused_leaky_relu, fused_leaky_relu_native
from ilo_pl.ops.upfirdn2d import upfirdn2d, upfirdn2d_native

__all__ = ["FusedLeakyReLU", "fused_leaky_relu", "fused_leaky_relu_native", "upfirdn2d", "upfirdn2d_native"]
