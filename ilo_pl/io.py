"""Image files in and out, and run folders that never overwrite earlier results.

Images inside ilo-pl are float tensors in ``[-1, 1]``; on disk they are 8-bit
RGB PNGs mapped linearly ``[-1, 1] -> [0, 255]`` (never min-max normalised,
so saved pixels mean the same thing in every file).
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: :func:`load_image` warns when it enlarges an image by more than this factor (per side) to
#: the generator's frame: a 16x16 image brought to 64x64 is fine, an 8x8 one (or a 256x256
#: one brought to 1024x1024 for StyleGAN-2) holds too little detail and comes out a smooth,
#: nearly flat face.
UPSCALE_WARN_FACTOR = 4.0

PathLike = Union[str, Path]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def load_image(path: PathLike, size: Union[Tuple[int, int], None] = None, policy: str = "center_crop") -> Tensor:
    """Read an image file as a ``[3, H, W]`` float tensor in ``[-1, 1]``.

    Grayscale is replicated to RGB, alpha is composited on black, and 16-bit
    images are scaled by their own bit depth.

    Args:
        path: the image file.
        size: ``(H, W)`` to bring the image to, or ``None`` to keep it.
        policy: how a differently sized image is brought to ``size``:
            ``"center_crop"`` (crop the largest centred region of the target's
            aspect ratio, then resize with Lanczos), ``"resize"`` (resize,
            ignoring the aspect ratio), or ``"error"``.

    Warns:
        UserWarning: naming the file, its size and ``size``, when the image is
            enlarged by more than :data:`UPSCALE_WARN_FACTOR` per side.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a readable image, or its size does not
            match under ``policy="error"``.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            arr = _to_rgb_array(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{path} is not a readable image file ({exc})") from exc
    if size is not None and arr.shape[:2] != tuple(size):
        arr = _fit(arr, tuple(size), policy, path)
    return torch.from_numpy(arr).permute(2, 0, 1).float() * 2 - 1


def _to_rgb_array(im) -> np.ndarray:  # noqa: ANN001 - PIL image
    """An ``[H, W, 3]`` float32 array in ``[0, 1]`` from any PIL mode."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if a.max() > 255 or im.mode.startswith("I;16") else 255.0
        a = np.clip(a / peak, 0, 1)
        return np.repeat(a[..., None], 3, axis=2).astype(np.float32)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        return (rgba[..., :3] * rgba[..., 3:4]).astype(np.float32)
    if im.mode == "F":
        a = np.clip(np.asarray(im, dtype=np.float32), 0, 1)
        return np.repeat(a[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _fit(arr: np.ndarray, size: Tuple[int, int], policy: str, path: Path) -> np.ndarray:
    from PIL import Image

    h, w = arr.shape[:2]
    th, tw = size
    if policy == "error":
        raise ValueError(
            f"{path} is {h}x{w} but the generator makes {th}x{tw} images; resize it, or use "
            "the resize policy 'center_crop' or 'resize'"
        )
    if policy == "center_crop":
        scale = min(h / th, w / tw)
        # At least one pixel: a tiny image must not round to an empty crop.
        ch, cw = max(1, int(round(th * scale))), max(1, int(round(tw * scale)))
        top, left = (h - ch) // 2, (w - cw) // 2
        arr = arr[top : top + ch, left : left + cw]
    elif policy != "resize":
        raise ValueError(f"unknown resize policy {policy!r}; use 'center_crop', 'resize' or 'error'")
    factor = max(th / arr.shape[0], tw / arr.shape[1])
    if factor > UPSCALE_WARN_FACTOR:
        warnings.warn(
            f"{path} is only {h}x{w} pixels: it is enlarged {factor:.3g}x to the generator's {th}x{tw} frame "
            f"(more than {UPSCALE_WARN_FACTOR:g}x), so it holds too little detail and the result will be a "
            f"smooth, nearly flat image; give an image of at least {math.ceil(th / UPSCALE_WARN_FACTOR)}x"
            f"{math.ceil(tw / UPSCALE_WARN_FACTOR)} pixels",
            stacklevel=3,
        )
    im = Image.fromarray((arr * 255).round().astype(np.uint8))
    im = im.resize((tw, th), Image.LANCZOS)
    return np.asarray(im, dtype=np.float32) / 255.0


def to_uint8(image: Tensor) -> np.ndarray:
    """``[3, H, W]`` in ``[-1, 1]`` -> ``[H, W, 3]`` uint8, linearly (values outside are clipped)."""
    if image.dim() != 3:
        raise ValueError(f"expected one image [C, H, W]; got shape {tuple(image.shape)}")
    x = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.permute(1, 2, 0).numpy()
    return x if x.shape[2] == 3 else np.repeat(x[..., :1], 3, axis=2)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A reader (or a resumed run) sees either no file or the complete file,
    never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; outputs are for everyone the umask allows
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_image(image: Tensor, path: PathLike) -> None:
    """Save ``[3, H, W]`` in ``[-1, 1]`` as an 8-bit PNG, atomically."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def ensure_writable_dir(path: PathLike, what: str, option: str) -> Path:
    """Create ``path`` (and parents) if needed and check it can be written.

    Raises:
        PermissionError: ``"cannot create the <what> <path>: ...; choose another <option>"``
            or ``"the <what> <path> is not writable; ..."``.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(f"cannot create the {what} {path}: {exc}; choose another {option}") from exc
    if not os.access(path, os.W_OK):
        raise PermissionError(f"the {what} {path} is not writable; choose another {option}")
    return path


def new_run_dir(root: PathLike, prefix: str = "run") -> Path:
    """Create and return ``root/<prefix>_NNN`` with the next free number.

    Creation is atomic (``mkdir`` without ``exist_ok``), so two runs started
    at once never share a folder and no earlier run is overwritten.

    Raises:
        PermissionError: naming the folder, if ``root`` cannot be written.
    """
    root = ensure_writable_dir(root, "output folder", "--output.output_dir")
    existing = [p.name for p in root.glob(f"{prefix}_*")]
    nums = [int(x.rsplit("_", 1)[1]) for x in existing if x.rsplit("_", 1)[1].isdigit()]
    n = max(nums) + 1 if nums else 0
    while True:
        cand = root / f"{prefix}_{n:03d}"
        try:
            cand.mkdir()
            return cand
        except FileExistsError:
            n += 1
