"""Image-quality metrics, per sample (torchmetrics functional).

``true_mse`` is the paper's metric: the mean squared error against the
ground-truth image on the ``[-1, 1]`` scale. PSNR and SSIM are computed on the
``[0, 1]`` scale (data range 1). All three first clamp both images to
``[-1, 1]``, as the saved PNGs do, so the metrics describe the images written
to disk (a generator such as StyleGAN-2 can render slightly outside the range).

``stlpips`` (:func:`stlpips`) is a perceptual distance, lower is better: the
shift-tolerant LPIPS of Ghildyal & Liu (ECCV 2022) with its AlexNet trunk, on
the clamped images, resized (bilinear, antialiased) to at most 256 pixels a
side. It is **not** the LPIPS the ILO paper reports (Zhang et al.'s, whose
ImageNet backbones are not available offline); its weights ship complete in
the ``stlpips-pytorch`` package (see :mod:`ilo_pl.losses.stlpips`).
"""

from __future__ import annotations

import warnings
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

#: The ST-LPIPS trunk of the ``stlpips`` metric (AlexNet: the usual metric backbone, and cheap).
STLPIPS_NET = "alex"
#: Images with a longer side are resized to this before the ``stlpips`` metric (``None``: never).
STLPIPS_MAX_SIZE = 256

# Loaded ST-LPIPS networks by (net, device): the metric is computed for every finished problem.
_NETWORKS: Dict[Tuple[str, str], torch.nn.Module] = {}
_warned_missing = False


def _stlpips_network(net: str, device: torch.device) -> torch.nn.Module:
    key = (net, str(device))
    if key not in _NETWORKS:
        from ilo_pl.losses.stlpips import stlpips_network

        _NETWORKS[key] = stlpips_network(net).to(device)
    return _NETWORKS[key]


@torch.no_grad()
def stlpips(pred: Tensor, target: Tensor, net: str = STLPIPS_NET, max_size: Optional[int] = STLPIPS_MAX_SIZE) -> Tensor:
    """Per-sample ST-LPIPS (shift-tolerant LPIPS) of ``pred`` vs ``target``: ``[B]`` float32, lower is better.

    Both images are clamped to ``[-1, 1]`` (as the PNGs and the other
    metrics), and resized (bilinear, antialiased, aspect kept) so that their
    longer side is at most ``max_size``. Computed in float32 on ``pred``'s
    device; the network is loaded once per ``(net, device)``.

    Args:
        pred: ``[B, 3, H, W]``, nominally in ``[-1, 1]``.
        target: same shape, likewise.
        net: ``"alex"`` (default) or ``"vgg"``.
        max_size: the longest side the network sees; ``None`` keeps the size.

    Raises:
        ValueError: shapes that differ, images that are not RGB, or smaller than
            the network takes (21 pixels for AlexNet, 18 for VGG).
        FileNotFoundError: ``stlpips-pytorch`` (which ships the weights) is not installed.

    Example:
        >>> x = torch.zeros(2, 3, 64, 64)
        >>> stlpips(x, x)
        tensor([0., 0.])
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} shapes differ")
    model = _stlpips_network(net, pred.device)
    pred = pred.detach().float().clamp(-1, 1)
    target = target.detach().to(pred.device).float().clamp(-1, 1)
    h, w = pred.shape[-2:]
    if max_size is not None and max(h, w) > max_size:
        scale = max_size / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        pred = F.interpolate(pred, size=size, mode="bilinear", align_corners=False, antialias=True)
        target = F.interpolate(target, size=size, mode="bilinear", align_corners=False, antialias=True)
    return model(pred, target)


def _stlpips_min_size() -> int:
    from ilo_pl.losses.stlpips import MIN_SIZE

    return MIN_SIZE[STLPIPS_NET]


def stlpips_or_none(pred: Tensor, target: Tensor) -> Optional[Tensor]:
    """:func:`stlpips`, or ``None`` (with one warning per process) when its weights are not installed."""
    global _warned_missing
    try:
        return stlpips(pred, target)
    except FileNotFoundError as err:
        if not _warned_missing:
            _warned_missing = True
            warnings.warn(f"the stlpips metric is left empty: {err}", stacklevel=2)
        return None


@torch.no_grad()
def image_metrics(pred: Tensor, target: Tensor, perceptual: bool = False) -> Dict[str, Tensor]:
    """Per-sample ``true_mse``, ``psnr`` (dB) and ``ssim`` of ``pred`` vs ``target``, and optionally ``stlpips``.

    Args:
        pred: ``[B, C, H, W]``, nominally in ``[-1, 1]`` (clamped to it first).
        target: same shape, likewise.
        perceptual: also ``stlpips`` (:func:`stlpips`) for RGB images, when the
            ``stlpips-pytorch`` weights are installed (else left out, with one
            warning), and the images are large enough for it.

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
    out = {"true_mse": mse, "psnr": psnr, "ssim": ssim}
    if perceptual and pred.shape[1] == 3 and min(pred.shape[-2:]) >= _stlpips_min_size():
        d = stlpips_or_none(pred, target)
        if d is not None:
            out["stlpips"] = d.to(mse.device)
    return out
