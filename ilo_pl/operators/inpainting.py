"""Inpainting: observe a subset of pixels given by a binary mask."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ilo_pl.operators.base import LinearOperator, OperatorSpec, per_sample


class Inpainting(LinearOperator):
    """``A(x) = m * x`` for a binary mask ``m`` (1 = observed).

    Args:
        mask: ``[H, W]``, ``[1 or C, H, W]`` or ``[B, 1 or C, H, W]`` of 0/1 values.
            A mask is always given explicitly (never inferred from black pixels:
            a black observed pixel is still an observation).
        noise_model: the measurement noise (``None``: noiseless), e.g.
            :class:`~ilo_pl.operators.noise.GaussianNoiseModel`.

    Raises:
        ValueError: if the mask is not binary, has a bad shape, or observes nothing.

    Example:
        >>> import torch
        >>> op = Inpainting(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))  # pixel (0, 1) missing
        >>> y = op(torch.full((1, 3, 2, 2), 0.5))
        >>> op.superimpose(torch.full((1, 3, 2, 2), -1.0), y)[0, 0]  # observed pixels, the rest from x
        tensor([[ 0.5000, -1.0000],
                [ 0.5000,  0.5000]])
        >>> op.measurement_error(op.A(torch.zeros(1, 3, 2, 2)), y)  # mean over observed entries only
        tensor([0.2500])
    """

    batched_buffers = ("mask",)

    def __init__(self, mask: Tensor, *, noise_model: Optional[nn.Module] = None) -> None:
        super().__init__(noise_model=noise_model)
        mask = torch.as_tensor(mask)
        if mask.dim() == 2:
            mask = mask[None]
        if mask.dim() == 3:
            mask = mask[None]
        if mask.dim() != 4:
            raise ValueError(
                f"a mask must be [H, W], [C, H, W] or [B, C, H, W]; got shape {tuple(mask.shape)}"
            )
        mask = mask.to(torch.float32)
        if not torch.all((mask == 0) | (mask == 1)):
            raise ValueError("a mask must contain only 0 (missing) and 1 (observed) values")
        observed = mask.flatten(1).sum(1)
        if (observed == 0).any():
            raise ValueError(
                "the mask observes no pixel (all zeros); nothing can be reconstructed from it. "
                "Check the mask file or the observed fraction"
            )
        self.register_buffer("mask", mask)

    def A(self, x: Tensor) -> Tensor:  # noqa: N802
        self._check_size(x)
        return x * self.mask.to(x.dtype)

    def A_adjoint(self, y: Tensor) -> Tensor:  # noqa: N802
        self._check_size(y)
        return y * self.mask.to(y.dtype)

    def least_norm_solve(self, r: Tensor, damping: Union[float, Tensor] = 0.0) -> Tensor:
        # A A^T = diag(m) on image space: (A A^T + damping)^+ scales observed entries by
        # 1 / (1 + damping) and A^T zeroes the rest (for damping 0: paste the residual).
        return self.A_adjoint(r) / (1 + per_sample(damping, r))

    def gram_diagonal(self, like: Tensor) -> Tensor:
        self._check_size(like)
        return self.mask.to(dtype=like.dtype, device=like.device).expand(like.shape)  # diag(m)^2 = diag(m)

    def measurement_error(self, Ax: Tensor, y: Tensor) -> Tensor:  # noqa: N803
        # Mean over observed entries only, so the loss does not depend on the
        # fraction observed (1% masks would otherwise see a 100x smaller loss).
        m = self.mask.to(Ax.dtype).expand_as(Ax)
        return ((Ax - y).pow(2) * m).flatten(1).sum(1) / m.flatten(1).sum(1)

    def superimpose(self, x: Tensor, y: Tensor) -> Tensor:
        m = self.mask.to(x.dtype)
        return y * m + x * (1 - m)

    def _check_size(self, x: Tensor) -> None:
        self.check_image(x)
        if tuple(x.shape[-2:]) != tuple(self.mask.shape[-2:]):
            raise ValueError(
                f"the mask is {tuple(self.mask.shape[-2:])} but the images are "
                f"{tuple(x.shape[-2:])}; make a mask of the image size"
            )
        # Broadcasting would otherwise silently turn a 3-channel mask on a
        # grayscale batch (or B masks on another batch size) into a bigger output.
        mb, mc = self.mask.shape[:2]
        if mc not in (1, x.shape[1]):
            raise ValueError(
                f"the mask has {mc} channels but the images have {x.shape[1]}; "
                "use a 1-channel mask or one channel per image channel"
            )
        if mb not in (1, x.shape[0]):
            raise ValueError(
                f"the operator holds {mb} per-problem masks but the batch has {x.shape[0]} "
                "samples; stack one operator per sample (Operator.stack)"
            )


class BoxMask(OperatorSpec):
    """Hide a rectangle: rows ``top..bottom`` and columns ``left..right`` (0-based, inclusive).

    Args:
        box: ``[top, bottom, left, right]`` in pixels of the image.
    """

    shared = True

    def __init__(self, box: Sequence[int]) -> None:
        if len(box) != 4:
            raise ValueError(f"box must be [top, bottom, left, right]; got {list(box)}")
        self.box = [int(b) for b in box]

    def build(self, image_shape: Tuple[int, int, int], seed: int, name: Optional[str] = None) -> Inpainting:
        _, h, w = image_shape
        top, bottom, left, right = self.box
        if not (0 <= top <= bottom < h and 0 <= left <= right < w):
            raise ValueError(f"box {self.box} does not fit in a {h}x{w} image")
        mask = torch.ones(1, 1, h, w)
        mask[..., top : bottom + 1, left : right + 1] = 0
        return Inpainting(mask)


class RandomMask(OperatorSpec):
    """Observe a random fraction of the pixels (all channels of a pixel together).

    Args:
        fraction: observed fraction in ``(0, 1]``; exactly ``round(fraction * H * W)``
            pixels (at least one) are observed.
        shared: one mask for all problems (else one per problem, seeded).
        seed: the seed of the shared mask.
    """

    def __init__(self, fraction: float, shared: bool = False, seed: int = 0) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"the observed fraction must be in (0, 1]; got {fraction}")
        self.fraction = float(fraction)
        self.shared = bool(shared)
        self.seed = int(seed)

    def build(self, image_shape: Tuple[int, int, int], seed: int, name: Optional[str] = None) -> Inpainting:
        _, h, w = image_shape
        g = torch.Generator().manual_seed(self.seed if self.shared else seed)
        n = h * w
        k = max(1, int(round(self.fraction * n)))
        idx = torch.randperm(n, generator=g)[:k]
        mask = torch.zeros(n)
        mask[idx] = 1
        return Inpainting(mask.view(1, 1, h, w))


class FileMask(OperatorSpec):
    """A mask read from an image file: white (>= 128) observed, black missing.

    Args:
        path: a grayscale/RGB image file of the image size, or a folder with one
            mask per problem named like the problem's image (``<stem>.png``).
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"mask file or folder {self.path} does not exist")
        self.shared = self.path.is_file()

    def build(self, image_shape: Tuple[int, int, int], seed: int, name: Optional[str] = None) -> Inpainting:
        from PIL import Image
        import numpy as np

        path = self.path
        if path.is_dir():
            if name is None:
                raise ValueError("a folder of masks needs the problem's name")
            cands = sorted(path.glob(Path(name).stem + ".*"))
            if not cands:
                raise FileNotFoundError(f"no mask named {Path(name).stem}.* in {path}")
            path = cands[0]
        arr = np.asarray(Image.open(path).convert("L"))
        _, h, w = image_shape
        if arr.shape != (h, w):
            raise ValueError(
                f"mask {path} is {arr.shape[0]}x{arr.shape[1]} but the images are {h}x{w}; "
                "make a mask of the image size"
            )
        return Inpainting(torch.from_numpy((arr >= 128).astype("float32"))[None, None])
