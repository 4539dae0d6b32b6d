"""Image-quality metrics, per sample (torchmetrics functional).

``true_mse`` is the paper's metric: the mean squared error against the
ground-truth image on the ``[-1, 1]`` scale. PSNR and SSIM are computed on the
``[0, 1]`` scale (data range 1). All three first clamp both images to
``[-1, 1]``, as the saved PNGs do, so the metrics describe the images written
to disk (a generator such as StyleGAN-2 can render slightly outside the range).
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


@torch.no_grad()
def image_metrics(pred: Tensor, target: Tensor) -> Dict[str, Tensor]:
    """Per-sample ``true_mse``, ``psnr`` (dB) and ``ssim`` of ``pred`` vs ``target``.

    Args:
        pred: ``[B, C, H, W]``, nominally in ``[-1, 1]`` (clamped to it first).
        target: same shape, likewise.

    Returns:
        A dict of ``[B]`` float tensors.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} shapes differ")
    # Clamped like the PNGs, for all three metrics alike.
    pred, target = pred.float().clamp(-1, 1), target.float().clamp(-1, 1)
    mse = (pred - target).pow(2).flatten(1).mean(1)
    p01, t01 = (pred + 1) / 2, (target + 1) / 2
    psnr = peak_signal_noise_ratio(p01, t01, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(p01, t01, data_range=1.0, reduction="none")
    return {"true_mse": mse, "psnr": psnr, "ssim": ssim}
