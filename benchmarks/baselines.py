"""Classical baselines of the quality benchmark: what a user would pick without a generator.

=====================  ==============================================================
task                   baseline
=====================  ==============================================================
inpainting             biharmonic inpainting (``skimage.restoration.inpaint_biharmonic``)
denoising              BM3D (``bm3d.bm3d_rgb``, the known noise level)
super-resolution       bicubic upsampling (:func:`ilo_pl.operators.upsample_bicubic`)
compressed sensing     total-variation regularised least squares over ``[-1, 1]``,
                       solved by Chambolle-Pock with the operator's ``A``, ``A^T``
=====================  ==============================================================

Every function takes and returns batches ``[B, C, H, W]`` in ``[-1, 1]`` and
treats each sample on its own (the result of a sample does not depend on its
batch-mates).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ilo_pl.operators import Inpainting, LinearOperator, Operator, upsample_bicubic

#: TV weight of :func:`tv_least_squares`: the best single value of {1e-3, 1e-2, 3e-2, 1e-1}
#: over the m/n grid on the 7 benchmark faces (1e-1 is better at m/n <= 5%, 1e-2 at 50%).
TV_WEIGHT = 3e-2
#: PDHG iterations of :func:`tv_least_squares`.
TV_STEPS = 500


def _check_images(x: Tensor, what: str) -> None:
    if not torch.is_tensor(x) or x.dim() != 4 or not x.is_floating_point():
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{what} must be a float tensor [B, C, H, W] in [-1, 1]; got {got}")


def biharmonic_inpaint(y: Tensor, mask: Tensor) -> Tensor:
    """Fill the unobserved pixels of each image by biharmonic inpainting.

    Args:
        y: observations ``[B, C, H, W]`` in ``[-1, 1]`` (unobserved pixels are ignored).
        mask: ``[B or 1, 1 or C, H, W]``, 1 = observed (the :class:`Inpainting` mask).

    Returns:
        ``[B, C, H, W]``: observed pixels kept, missing pixels filled.
    """
    from skimage.restoration import inpaint_biharmonic

    _check_images(y, "the observation")
    b, c, h, w = y.shape
    if mask.dim() != 4 or tuple(mask.shape[-2:]) != (h, w) or mask.shape[0] not in (1, b):
        raise ValueError(
            f"the mask {tuple(mask.shape)} does not fit observations {tuple(y.shape)}; "
            "give the operator's [B or 1, 1 or C, H, W] mask"
        )
    # A pixel is missing when no channel of it is observed (masks hide whole pixels).
    missing = (mask.amax(1) < 0.5).expand(b, h, w).cpu().numpy()
    arr = y.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    out = np.empty_like(arr)
    for i in range(b):
        if not missing[i].any():
            out[i] = arr[i]
            continue
        out[i] = inpaint_biharmonic(arr[i], missing[i], channel_axis=-1)
    res = torch.from_numpy(out).permute(0, 3, 1, 2).to(y.dtype).to(y.device)
    return res.clamp(-1.0, 1.0)


def bm3d_denoise(y: Tensor, sigma: float) -> Tensor:
    """BM3D (colour, opponent colour space) at the known noise level.

    Args:
        y: noisy images ``[B, 3, H, W]`` in ``[-1, 1]``.
        sigma: the noise level on the 0..255 scale (as :class:`~ilo_pl.operators.GaussianNoise`).
    """
    import bm3d

    _check_images(y, "the observation")
    if y.shape[1] != 3:
        raise ValueError(f"bm3d_denoise needs RGB images [B, 3, H, W]; got {y.shape[1]} channels")
    if not sigma > 0:
        return y.clone()
    # Images are [-1, 1]; BM3D works on [0, 1], where the std is sigma / 255.
    arr = ((y.detach().cpu().double() + 1) / 2).permute(0, 2, 3, 1).numpy()
    out = np.stack([bm3d.bm3d_rgb(a, sigma_psd=float(sigma) / 255.0) for a in arr])
    res = torch.from_numpy(np.ascontiguousarray(out)).permute(0, 3, 1, 2) * 2 - 1
    return res.to(y.dtype).to(y.device).clamp(-1.0, 1.0)


def bicubic_upsample(y: Tensor, factor: int) -> Tensor:
    """Bicubic upsampling of the low-resolution observation by ``factor``."""
    _check_images(y, "the observation")
    return upsample_bicubic(y, factor)


def _grad(x: Tensor) -> Tensor:
    """Forward differences ``[B, 2, C, H, W]`` (zero across the last row / column)."""
    g = x.new_zeros(x.shape[0], 2, *x.shape[1:])
    g[:, 0, :, :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    g[:, 1, :, :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return g


def _grad_adjoint(g: Tensor) -> Tensor:
    """The adjoint of :func:`_grad` (minus the divergence)."""
    gh, gw = g[:, 0], g[:, 1]
    out = gh.new_zeros(gh.shape)
    out[..., :-1, :] -= gh[..., :-1, :]
    out[..., 1:, :] += gh[..., :-1, :]
    out[..., :, :-1] -= gw[..., :, :-1]
    out[..., :, 1:] += gw[..., :, :-1]
    return out


def _norm_sq(operator: LinearOperator, b: int, image_shape: tuple, like: Tensor, iters: int = 30) -> Tensor:
    """Per-sample ``||K||^2`` of ``K = [A; grad]`` by power iteration: ``[B]``."""
    g = torch.Generator().manual_seed(0)
    # One start vector for all samples: a sample's estimate does not depend on its batch-mates.
    v = torch.randn(1, *image_shape, generator=g).to(like).expand(b, *image_shape).clone()
    est = like.new_ones(b)
    for _ in range(iters):
        v = v / v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        w = operator.A_adjoint(operator.A(v)).reshape(v.shape) + _grad_adjoint(_grad(v))
        est = (w * v).flatten(1).sum(1)
        v = w
    return est * 1.05  # a margin: power iteration approaches the norm from below


def tv_least_squares(
    operator: Operator,
    y: Tensor,
    image_shape: tuple,
    weight: Optional[float] = None,
    steps: Optional[int] = None,
) -> Tensor:
    """``argmin_{x in [-1, 1]^n} 0.5 ||A x - y||^2 + weight * TV(x)`` by Chambolle-Pock (PDHG).

    The primal-dual hybrid gradient method with ``K = [A; grad]``: the dual of
    the data term has a closed-form prox, the dual of the isotropic TV is a
    projection onto per-pixel balls of radius ``weight``, and the box
    ``[-1, 1]`` is the primal prox. Step sizes ``tau = sigma = 1 / ||K||``
    per sample (power iteration), so samples do not interact. Started at
    ``A^T y`` (clamped).

    Args:
        operator: a batched linear operator (its ``A`` and ``A_adjoint``).
        y: the measurements ``[B, ...]``.
        image_shape: ``(C, H, W)`` of the images.
        weight: the TV weight (default :data:`TV_WEIGHT`).
        steps: PDHG iterations (default :data:`TV_STEPS`).
    """
    weight = TV_WEIGHT if weight is None else float(weight)
    steps = TV_STEPS if steps is None else int(steps)
    if not isinstance(operator, LinearOperator):
        raise TypeError(
            f"tv_least_squares needs a LinearOperator (it uses A^T); got {type(operator).__name__}"
        )
    if steps < 1:
        raise ValueError(f"tv_least_squares needs steps >= 1; got {steps}")
    b = y.shape[0]
    with torch.no_grad():
        y = y.detach().to(torch.float64)
        shape = tuple(int(v) for v in image_shape)
        x = operator.A_adjoint(y).reshape(b, *shape).clamp(-1.0, 1.0)
        step = _norm_sq(operator, b, shape, x).rsqrt()  # tau = sigma = 1 / ||K||
        tau, sig = step.view(-1, 1, 1, 1), step.view(-1, *([1] * (y.dim() - 1)))
        sig_g = step.view(-1, 1, 1, 1, 1)
        xbar, q, p = x.clone(), torch.zeros_like(y), x.new_zeros(b, 2, *shape)
        for _ in range(steps):
            # Dual of 0.5 ||. - y||^2: prox_{s f*}(u) = (u - s y) / (1 + s).
            q = (q + sig * (operator.A(xbar) - y)) / (1 + sig)
            # Dual of weight * ||.||_{2,1}: project each pixel's gradient onto the weight-ball.
            p = p + sig_g * _grad(xbar)
            p = p / (p.pow(2).sum(1, keepdim=True).sqrt() / weight).clamp_min(1.0)
            x_new = (x - tau * (operator.A_adjoint(q).reshape(x.shape) + _grad_adjoint(p))).clamp(-1.0, 1.0)
            xbar = 2 * x_new - x
            x = x_new
    return x.float()


def classical_baseline(task: str, operator: Operator, y: Tensor, level: float, image_shape: tuple) -> Tensor:
    """The classical baseline of ``task`` (see the module table) for one batch.

    Args:
        task: ``inpainting_random``, ``inpainting_box``, ``denoising``, ``superres``
            or ``compressed_sensing``.
        operator: the batched operator that made ``y``.
        y: the observations.
        level: the grid point (sigma for denoising, the factor for super-resolution).
        image_shape: ``(C, H, W)`` of the images.

    Raises:
        ValueError: for an unknown task.
    """
    if task.startswith("inpainting"):
        if not isinstance(operator, Inpainting):
            raise TypeError(f"inpainting needs an Inpainting operator; got {type(operator).__name__}")
        return biharmonic_inpaint(y, operator.mask)
    if task == "denoising":
        return bm3d_denoise(y, level)
    if task == "superres":
        return bicubic_upsample(y, int(level))
    if task == "compressed_sensing":
        return tv_least_squares(operator, y, image_shape)
    raise ValueError(
        f"no classical baseline for task {task!r}; tasks are inpainting_random, inpainting_box, "
        "denoising, superres, compressed_sensing"
    )


#: The name each task's baseline has in the results.
BASELINE_NAMES = {
    "inpainting_random": "biharmonic",
    "inpainting_box": "biharmonic",
    "denoising": "bm3d",
    "superres": "bicubic",
    "compressed_sensing": "tv_lsq",
}


def baseline_name(task: str) -> Optional[str]:
    """The baseline's name in the CSV and tables (``None`` for an unknown task)."""
    return BASELINE_NAMES.get(task)
