"""The demo's problems: photo in, mask painted, task chosen -> an ordinary ilo-pl config.

Everything here is plain data and files (numpy and PIL; torch only to draw a
sample face), so the page's checks answer at once. A bad input raises
:class:`DemoError`, whose message the page shows as it is.

The config a solve runs is made of layers, as ``ilo-pl fit --config A
--config B`` layers them: the base (the user's ``ilo-pl demo --config ...``
files and overrides, or else the task's shipped config, :data:`TASK_MODELS`)
and the demo's layer (:func:`demo_layer`: the photo, the task's operator, the
steps preset and the run folder).
"""

from __future__ import annotations

import copy
import io
import math
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import yaml

#: Tasks: key -> label shown on the page.
TASKS: Dict[str, str] = {
    "paint": "Inpainting: the mask you paint",
    "box": "Inpainting: a box",
    "random": "Inpainting: random pixels observed",
    "superres": "Super-resolution",
    "denoise": "Denoising",
    "cs": "Compressed sensing",
}

#: Steps presets: ``quick`` divides every stage's steps by this (at least one step each); ``paper`` keeps them.
QUICK_DIVISOR = 4
PRESETS = ("quick", "paper")

_STAGE = {"free": ["state"]}


def _stages(z_steps: int, steps: int, lr: float, radii: Sequence[float], z_extra: Optional[Dict] = None) -> List[Dict]:
    first = {"split": 0, "steps": z_steps, "lr": 0.1, "free": ["latent"], **(z_extra or {})}
    return [first] + [{"split": i + 1, "steps": steps, "lr": lr, "free": ["state"], "radius": {"state": float(r)}}
                      for i, r in enumerate(radii)]


#: The model section of each task's shipped config (``configs/<task>.yaml``; the embedded 64x64
#: face DCGAN with the tuned schedules), so that the demo needs no file of the repository.
#: ``tests/test_demo.py`` checks they equal the configs.
TASK_MODELS: Dict[str, Dict[str, Any]] = {
    "inpainting_box": {"stages": _stages(200, 50, 0.03, (1000, 600, 600, 600))},
    "inpainting_random": {"stages": _stages(300, 25, 0.03, (1000, 600, 600, 600))},
    "superres": {"stages": _stages(200, 50, 0.03, (1000, 600, 600, 600))},
    "denoising": {"stages": _stages(300, 25, 0.01, (250, 150, 150, 150), {"sna": False}),
                  "sna": True, "sna_samples": 16},
    "compressed_sensing": {"stages": _stages(100, 75, 0.01, (1000, 600, 600, 600))},
}
for _m in TASK_MODELS.values():
    _m.update({"generator": {"class_path": "ilo_pl.modules.generators.DCGANGenerator"},
               "loss_weights": {"mse": 1.0}, "sphere": True})

#: Which shipped config each task's default model comes from.
TASK_CONFIG = {"paint": "inpainting_box", "box": "inpainting_box", "random": "inpainting_random",
               "superres": "superres", "denoise": "denoising", "cs": "compressed_sensing"}

#: Default task parameters (the shipped configs').
DEFAULT_PARAMS: Dict[str, Any] = {"box": None, "percent": 10.0, "factor": 4, "sigma": 50.0, "ratio": 0.1}

#: The file names of a problem's inputs in the visitor's folder and in the reproduction bundle.
PHOTO_NAME, MASK_NAME = "photo.png", "mask.png"

#: Largest photo accepted (pixels): bigger files are refused before they are decoded.
MAX_PIXELS = 50_000_000


class DemoError(ValueError):
    """A bad input or setting, with a message meant for the page."""


# -- photos -------------------------------------------------------------------------------------
def read_photo(path: Union[str, Path]) -> np.ndarray:
    """Read any image file as ``[H, W, 3]`` float32 in ``[0, 1]``, converted as ``ilo-pl fit`` converts it.

    Grayscale is replicated, alpha composited on black, 16-bit scaled by its
    bit depth (:func:`ilo_pl.io.load_image`'s conversions).

    Raises:
        DemoError: the file is missing, is not a readable image, or is too large.
    """
    from PIL import Image

    from ilo_pl.io import _to_rgb_array

    path = Path(path)
    if not path.is_file():
        raise DemoError("no photo: upload an image file or pick a sample face")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise DemoError(f"{path.name} is {im.width}x{im.height} pixels: too large for the demo "
                                f"(at most {MAX_PIXELS // 1_000_000} megapixels)")
            im.load()
            arr = _to_rgb_array(im)
    except DemoError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise DemoError(f"{path.name} is not an image file that can be read ({type(exc).__name__}); "
                        "upload a PNG, JPEG, TIFF, BMP or WebP photo") from None
    if not np.isfinite(arr).all():
        raise DemoError(f"{path.name} has NaN or infinite pixels; upload another image")
    return arr


def crop_box(shape: Tuple[int, int], size: Tuple[int, int], zoom: float = 1.0, cx: float = 0.5,
             cy: float = 0.5) -> Tuple[int, int, int, int]:
    """The crop ``(top, left, height, width)`` of an ``shape = (H, W)`` photo for a ``size`` frame.

    ``zoom=1, cx=cy=0.5`` is ``ilo-pl fit``'s ``center_crop``: the largest
    centred region of the frame's aspect ratio. ``zoom`` in ``(0, 1]`` shrinks
    it (zooms in); ``cx``/``cy`` in ``[0, 1]`` move its centre across the
    photo (kept inside it).
    """
    h, w = shape
    th, tw = size
    if not 0 < zoom <= 1:
        raise DemoError(f"the crop zoom must be in (0, 1]; got {zoom}")
    scale = min(h / th, w / tw)
    ch, cw = max(1, int(round(th * scale))), max(1, int(round(tw * scale)))
    if zoom < 1:
        ch, cw = max(1, int(round(ch * zoom))), max(1, int(round(cw * zoom)))
    if zoom == 1 and cx == 0.5 and cy == 0.5:  # exactly ilo_pl.io's centred crop
        return (h - ch) // 2, (w - cw) // 2, ch, cw
    top = int(round(min(max(cy, 0.0), 1.0) * (h - ch)))
    left = int(round(min(max(cx, 0.0), 1.0) * (w - cw)))
    return top, left, ch, cw


def frame_photo(arr: np.ndarray, size: Tuple[int, int], zoom: float = 1.0, cx: float = 0.5,
                cy: float = 0.5) -> np.ndarray:
    """Crop a photo (:func:`read_photo`) to the generator's frame: ``[h, w, 3]`` uint8.

    The crop (:func:`crop_box`) is resized with Lanczos as ``ilo-pl fit``
    resizes (:func:`ilo_pl.io.load_image`, ``center_crop``), so with the
    default crop the frame is what ``fit`` would make of the photo (as 8 bits).
    """
    from PIL import Image

    top, left, ch, cw = crop_box(arr.shape[:2], size, zoom, cx, cy)
    crop = arr[top: top + ch, left: left + cw]
    th, tw = size
    if crop.shape[:2] == (th, tw):
        return (crop * 255).round().astype(np.uint8)
    im = Image.fromarray((crop * 255).round().astype(np.uint8)).resize((tw, th), Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def upscale_warning(shape: Tuple[int, int], size: Tuple[int, int], zoom: float = 1.0) -> Optional[str]:
    """A note when the crop is enlarged more than ``ilo-pl fit`` warns about (see :data:`ilo_pl.io.UPSCALE_WARN_FACTOR`)."""
    from ilo_pl.io import UPSCALE_WARN_FACTOR

    _, _, ch, cw = crop_box(shape, size, zoom)
    factor = max(size[0] / ch, size[1] / cw)
    if factor > UPSCALE_WARN_FACTOR:
        return (f"the crop is only {ch}x{cw} pixels, enlarged {factor:.3g}x to the {size[0]}x{size[1]} frame: "
                "the result will be smooth and nearly flat")
    return None


def sample_face(name: str, size: Tuple[int, int]) -> np.ndarray:
    """One of ``ilo-pl fit``'s sample faces (``data: samples``) in the frame, as ``[h, w, 3]`` uint8."""
    import torch

    from ilo_pl.data import SAMPLE_FACES, SampleFaces
    from ilo_pl.io import to_uint8

    if name not in SAMPLE_FACES:
        raise DemoError(f"unknown sample face {name!r}; choose from {', '.join(sorted(SAMPLE_FACES))}")
    with torch.no_grad():
        x = SampleFaces([name]).load(0, (3, *size), 0)
    return to_uint8(x)


def save_png(arr: np.ndarray, path: Union[str, Path]) -> Path:
    """Write ``[H, W]`` or ``[H, W, 3]`` uint8 as a PNG (atomically)."""
    from PIL import Image

    from ilo_pl.io import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


# -- masks --------------------------------------------------------------------------------------
def _painted(value: Any) -> Optional[np.ndarray]:
    """``[H', W']`` bool: where any layer of an ImageEditor value is painted (alpha > 0)."""
    if value is None:
        return None
    layers = value.get("layers") if isinstance(value, Mapping) else None
    painted = None
    for layer in layers or []:
        if layer is None:
            continue
        a = np.asarray(layer)
        if a.ndim == 3 and a.shape[2] == 4:
            p = a[..., 3] > 0
        elif a.ndim == 3:
            p = a.max(axis=2) > 0
        elif a.ndim == 2:
            p = a > 0
        else:
            continue
        painted = p if painted is None else (painted | p) if painted.shape == p.shape else painted
    return painted


def painted_mask(value: Any, size: Tuple[int, int]) -> np.ndarray:
    """The frame pixels a visitor painted over, from Gradio's ImageEditor value.

    The editor shows the frame enlarged; a frame pixel is hidden when any part
    of its enlarged block is painted (any colour, any layer).

    Args:
        value: the editor's value (``{"background", "layers", "composite"}``,
            layers as ``[H', W', 4]`` arrays).
        size: the frame ``(h, w)``.

    Returns:
        ``[h, w]`` bool, True where hidden.

    Raises:
        DemoError: nothing painted, or everything painted.
    """
    painted = _painted(value)
    h, w = size
    if painted is None or not painted.any():
        raise DemoError("the mask is empty: paint over the part of the photo to hide (or choose another task)")
    hh, ww = painted.shape
    rows = np.minimum(np.arange(hh) * h // hh, h - 1)
    cols = np.minimum(np.arange(ww) * w // ww, w - 1)
    hidden = np.zeros((h, w), dtype=bool)
    ys, xs = np.nonzero(painted)
    hidden[rows[ys], cols[xs]] = True
    check_mask(hidden)
    return hidden


def check_mask(hidden: np.ndarray) -> None:
    """Refuse a mask that hides nothing or everything.

    Raises:
        DemoError: with the page's message.
    """
    if not hidden.any():
        raise DemoError("the mask is empty: paint over the part of the photo to hide (or choose another task)")
    if hidden.all():
        raise DemoError("the mask hides every pixel: nothing is observed, so there is nothing to reconstruct from; "
                        "leave part of the photo unpainted")


def mask_png(hidden: np.ndarray) -> np.ndarray:
    """A hidden-pixel mask as :class:`~ilo_pl.operators.FileMask` reads it: white observed, black hidden."""
    return np.where(hidden, 0, 255).astype(np.uint8)


# -- tasks --------------------------------------------------------------------------------------
def _number(value: Any, what: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{what} must be a number; got {value!r}") from None
    if not math.isfinite(x):
        raise DemoError(f"{what} must be a finite number; got {value!r}")
    return x


def default_box(size: Tuple[int, int]) -> List[int]:
    """The shipped box (over the mouth of a 64x64 face), scaled to the frame: ``[top, bottom, left, right]``."""
    h, w = size
    return [round(38 * h / 64), round(55 * h / 64) , round(14 * w / 64), round(49 * w / 64)]


def operator_entry(task: str, size: Tuple[int, int], params: Optional[Mapping[str, Any]] = None,
                   mask_path: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """The config's ``data.operator`` entry of a task, its parameters checked.

    Args:
        task: a key of :data:`TASKS`.
        size: the frame ``(h, w)``.
        params: ``box`` (``[top, bottom, left, right]``), ``percent`` (observed,
            random pixels), ``factor`` (super-resolution), ``sigma`` (denoising,
            0..255 scale), ``ratio`` (compressed sensing m/n); missing ones take
            :data:`DEFAULT_PARAMS`.
        mask_path: the painted mask's PNG (task ``paint``).

    Raises:
        DemoError: an unknown task or a parameter out of range.
    """
    p = {**DEFAULT_PARAMS, **{k: v for k, v in (params or {}).items() if v is not None}}
    h, w = size
    if task == "paint":
        if mask_path is None:
            raise DemoError("the mask is empty: paint over the part of the photo to hide (or choose another task)")
        return {"class_path": "ilo_pl.operators.FileMask", "init_args": {"path": str(mask_path)}}
    if task == "box":
        box = p["box"] if p["box"] is not None else default_box(size)
        try:
            box = [int(round(_number(b, "each box side"))) for b in box]
        except TypeError:
            raise DemoError("the box must be four numbers: top, bottom, left, right") from None
        if len(box) != 4:
            raise DemoError("the box must be four numbers: top, bottom, left, right")
        top, bottom, left, right = box
        if not (0 <= top <= bottom < h and 0 <= left <= right < w):
            raise DemoError(f"the box {box} does not fit in the {h}x{w} frame (rows 0..{h - 1}, columns 0..{w - 1}, "
                            "top <= bottom, left <= right)")
        if (bottom - top + 1) * (right - left + 1) == h * w:
            raise DemoError("the box hides every pixel: nothing is observed; make it smaller")
        return {"class_path": "ilo_pl.operators.BoxMask", "init_args": {"box": box}}
    if task == "random":
        pct = _number(p["percent"], "the observed percentage")
        if not 0 < pct <= 100:
            raise DemoError(f"the observed percentage must be in (0, 100]; got {pct:g}")
        return {"class_path": "ilo_pl.operators.RandomMask", "init_args": {"fraction": pct / 100}}
    if task == "superres":
        f = _number(p["factor"], "the super-resolution factor")
        if f != int(f) or f < 2:
            raise DemoError(f"the super-resolution factor must be a whole number >= 2; got {f:g}")
        f = int(f)
        if h % f or w % f or f > min(h, w) // 2:
            ok = [d for d in range(2, min(h, w) // 2 + 1) if h % d == 0 and w % d == 0]
            raise DemoError(f"the super-resolution factor must divide the {h}x{w} frame and leave at least "
                            f"2x2 pixels; choose one of {', '.join(map(str, ok))} (got {f})")
        return {"class_path": "ilo_pl.operators.SuperResolution", "init_args": {"factor": f}}
    if task == "denoise":
        s = _number(p["sigma"], "the noise sigma")
        if not 0 < s <= 255:
            raise DemoError(f"the noise sigma (0..255 scale) must be in (0, 255]; got {s:g}")
        return {"class_path": "ilo_pl.operators.Denoising", "init_args": {"sigma": s}}
    if task == "cs":
        r = _number(p["ratio"], "the measurement ratio m/n")
        if not 0 < r <= 1:
            raise DemoError(f"the measurement ratio m/n must be in (0, 1]; got {r:g}")
        return {"class_path": "ilo_pl.operators.CompressedSensing", "init_args": {"ratio": r, "kind": "circulant"}}
    raise DemoError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def quick_stages(stages: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The ``quick`` preset: every stage's steps divided by :data:`QUICK_DIVISOR` (at least 1)."""
    return [{**dict(s), "steps": max(1, int(s["steps"]) // QUICK_DIVISOR)} for s in stages]


def demo_layer(task: str, preset: str, photo: Union[str, Path], operator: Mapping[str, Any],
               base_model: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The demo's config layer, laid over the base config.

    Args:
        task: a key of :data:`TASKS`.
        preset: ``"quick"`` or ``"paper"``.
        photo: the framed photo's PNG (the problem's ground truth and input).
        operator: :func:`operator_entry`'s result.
        base_model: the resolved ``model`` section of the user's base config, or
            ``None`` for the task's shipped model (:data:`TASK_MODELS`, laid here whole).

    Raises:
        DemoError: an unknown preset.
    """
    if preset not in PRESETS:
        raise DemoError(f"unknown steps preset {preset!r}; choose {' or '.join(PRESETS)}")
    if task not in TASKS:
        raise DemoError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    layer: Dict[str, Any] = {}
    if base_model is None:
        model = copy.deepcopy(TASK_MODELS[TASK_CONFIG[task]])
        if preset == "quick":
            model["stages"] = quick_stages(model["stages"])
        layer["model"] = model
    elif preset == "quick":
        layer["model"] = {"stages": quick_stages(base_model["stages"])}
    layer["data"] = {"data": str(photo), "operator": dict(operator), "batch_size": 1, "seed": 0, "limit": None,
                     "resize": "center_crop"}
    return layer


def total_steps(stages: Sequence[Mapping[str, Any]]) -> int:
    """Optimizer steps of a stage list."""
    return sum(int(s["steps"]) for s in stages)


# -- downloads ----------------------------------------------------------------------------------
def portable_config(config_text: str) -> str:
    """A run folder's ``config.yaml`` made to run anywhere beside its photo (and mask).

    ``data.data`` becomes ``photo.png`` and a painted mask's path ``mask.png``
    (relative to where ``ilo-pl fit`` runs); the run folder settings are
    cleared (``fit`` makes a new ``runs/run_NNN``) and the progress bar is
    left to ``fit``'s default. Nothing that changes the result is touched.
    """
    cfg = yaml.safe_load(config_text) or {}
    data = cfg.setdefault("data", {})
    data["data"] = PHOTO_NAME
    op = data.get("operator") or {}
    if isinstance(op, dict) and str(op.get("class_path", "")).endswith("FileMask"):
        op.setdefault("init_args", {})["path"] = MASK_NAME
    out = cfg.setdefault("output", {})
    out["run_dir"] = None
    out["output_dir"] = "runs"
    trainer = cfg.get("trainer")
    if isinstance(trainer, dict) and "enable_progress_bar" in trainer:
        trainer["enable_progress_bar"] = None
    head = ("# Made by `ilo-pl demo`. Reproduce the page's result (same pixels) beside photo.png"
            + (" and mask.png" if data["operator"] and MASK_NAME in str(op) else "") + ":\n"
            "#   ilo-pl fit --config config.yaml\n")
    return head + yaml.safe_dump(cfg, sort_keys=False)


def reproduction_zip(config_text: str, photo: Union[str, Path], mask: Optional[Union[str, Path]],
                     path: Union[str, Path]) -> Path:
    """A zip of ``config.yaml`` (:func:`portable_config`), ``photo.png`` and ``mask.png`` (if any)."""
    from ilo_pl.io import atomic_write_bytes

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.yaml", portable_config(config_text))
        z.write(photo, PHOTO_NAME)
        if mask is not None:
            z.write(mask, MASK_NAME)
        z.writestr("README.txt", "Reproduce the demo's result: unzip, then in this folder run\n"
                                 "  ilo-pl fit --config config.yaml\n"
                                 "The reconstruction is runs/run_000/photo_reconstruction.png.\n")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
