"""Labelled strips: several same-sized images side by side, each with its caption drawn under it.

The page shows the stage-end previews and the result panels as one such strip
in a ``gr.Image``, not a ``gr.Gallery``: Gradio 6's gallery sizes its cells
from the page width rather than from the images, so with fewer images than
columns it shows a crop of a huge cell with the caption cut off. One PNG
drawn here keeps every tile at the generator frame's aspect ratio and every
caption readable, whatever the page does.

Small frames (the embedded DCGAN's 64x64) are enlarged by a whole factor
(nearest neighbour), so each tile holds the image's exact pixels:
:func:`strip_tiles` reads them back (the browser test does). Frames larger
than the tile size are reduced (Lanczos) to fit it.
"""

from __future__ import annotations

import functools
from typing import List, Sequence, Tuple

import numpy as np

#: A tile's longer side, in pixels, at most (and at least, for frames that a whole factor enlarges to it).
TILE = 128
#: Space between tiles and around the strip, in pixels.
GAP = 6
#: A column is at least this wide, so that short frames still get a readable caption.
MIN_COLUMN = 96
#: Caption font size (pixels) and the lines a caption may wrap to.
FONT_SIZE = 13
CAPTION_LINES = 2
BACKGROUND = (255, 255, 255)
INK = (40, 40, 40)

Box = Tuple[int, int, int, int]


def tile_size(size: Tuple[int, int], tile: int = TILE) -> Tuple[int, int, int]:
    """``(height, width, factor)`` of a tile showing a ``size`` frame; ``factor`` 0 when it is reduced.

    The tile keeps the frame's aspect ratio: a whole enlargement of it, or a
    reduction to ``tile`` pixels on its longer side.
    """
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"a frame must have pixels, not {h}x{w}")
    longer = max(h, w)
    if longer <= tile:
        k = max(1, tile // longer)
        return h * k, w * k, k
    # rounding keeps the aspect ratio within half a pixel
    return max(1, round(h * tile / longer)), max(1, round(w * tile / longer)), 0


@functools.lru_cache(maxsize=4)
def _font(size: int):  # noqa: ANN202 - a PIL font
    from PIL import ImageFont

    try:  # Pillow >= 10.1 with FreeType: its bundled scalable font
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # older Pillow: the small bitmap font
        return ImageFont.load_default()


def _text_width(text: str, font) -> int:  # noqa: ANN001 - a PIL font
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def _line_height(font) -> int:  # noqa: ANN001 - a PIL font
    _, top, _, bottom = font.getbbox("Ag,|")
    return int(bottom - top) + 3


def wrap_caption(text: str, width: int, lines: int = CAPTION_LINES) -> List[str]:
    """``text`` broken at spaces into at most ``lines`` lines that fit ``width`` pixels.

    What does not fit is cut, ending in "...".
    """
    font = _font(FONT_SIZE)
    out: List[str] = []
    words = text.split()
    while words and len(out) < lines:
        line = words.pop(0)
        while words and _text_width(f"{line} {words[0]}", font) <= width:
            line = f"{line} {words.pop(0)}"
        out.append(line)
    if words or (out and _text_width(out[-1], font) > width):
        # what does not fit is cut, visibly, rather than drawn over the next column
        last = out[-1] + (" " + " ".join(words) if words else "")
        while last and _text_width(last + "...", font) > width:
            last = last[:-1]
        out[-1] = last.rstrip() + "..."
    return out


def caption_height() -> int:
    """Height in pixels of the caption band under the tiles."""
    return CAPTION_LINES * _line_height(_font(FONT_SIZE)) + GAP


def strip_layout(n: int, size: Tuple[int, int], tile: int = TILE) -> Tuple[Tuple[int, int], List[Box], List[Box]]:
    """Where things go in a strip of ``n`` frames of ``size``.

    Returns:
        ``((height, width), tiles, captions)``: the strip's size and, per
        image, the ``(top, left, height, width)`` of its tile and of its
        caption band.
    """
    th, tw, _ = tile_size(size, tile)
    col = max(tw, MIN_COLUMN)
    band = caption_height()
    tiles: List[Box] = []
    captions: List[Box] = []
    for i in range(n):
        left = GAP + i * (col + GAP)
        tiles.append((GAP, left + (col - tw) // 2, th, tw))
        captions.append((GAP + th + GAP // 2, left, band, col))
    width = GAP + n * (col + GAP)
    return (GAP + th + GAP // 2 + band, width), tiles, captions


def caption_band(text: str, width: int) -> np.ndarray:
    """The caption band of ``text`` for a column ``width`` pixels wide, as a strip draws it (``[h, width, 3]`` uint8)."""
    from PIL import Image, ImageDraw

    font = _font(FONT_SIZE)
    band = Image.new("RGB", (width, caption_height()), BACKGROUND)
    draw = ImageDraw.Draw(band)
    step = _line_height(font)
    for k, line in enumerate(wrap_caption(text, width - 4)):
        x = (width - _text_width(line, font)) // 2
        draw.text((x, k * step), line, fill=INK, font=font)
    return np.asarray(band)


def _tile(image: np.ndarray, th: int, tw: int, factor: int) -> np.ndarray:
    from PIL import Image

    if factor:  # whole enlargement: every pixel becomes a factor x factor block
        return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    return np.asarray(Image.fromarray(image).resize((tw, th), Image.LANCZOS))


def _resized(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.NEAREST))


def _rgb(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"strip images must be uint8, not {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def labelled_strip(items: Sequence[Tuple[np.ndarray, str]], tile: int = TILE) -> np.ndarray:
    """One image of ``items`` (``(image, caption)``, all the same size) side by side, captions under them.

    Returns:
        ``[H, W, 3]`` uint8; an empty (white) strip for no items.

    Images of another size than the first are resized to it (nearest neighbour).

    Raises:
        ValueError: an image that is not uint8.
    """
    images = [_rgb(img) for img, _ in items]
    if not images:
        (h, w), _, _ = strip_layout(0, (tile, tile), tile)
        return np.full((h, w, 3), BACKGROUND, dtype=np.uint8)  # (GAP pixels wide)
    size = images[0].shape[:2]
    # another size (not expected: the writer shows observations at the frame's size) is fitted to the first's,
    # nearest neighbour so that a low-resolution picture still shows its pixels
    images = [img if img.shape[:2] == size else _resized(img, size) for img in images]
    th, tw, factor = tile_size(size, tile)
    (h, w), tiles, captions = strip_layout(len(images), size, tile)
    out = np.full((h, w, 3), BACKGROUND, dtype=np.uint8)
    for img, (_, text), (t, l, bh, bw), (ct, cl, ch, cw) in zip(images, items, tiles, captions):
        out[t:t + bh, l:l + bw] = _tile(img, th, tw, factor)
        out[ct:ct + ch, cl:cl + cw] = caption_band(text, cw)
    return out


def strip_tiles(strip: np.ndarray, n: int, size: Tuple[int, int], tile: int = TILE) -> List[np.ndarray]:
    """The ``n`` frames of a strip drawn by :func:`labelled_strip`, read back exactly.

    Raises:
        ValueError: the frames were reduced (larger than ``tile``), so their pixels are not in the strip
            as they were; or the strip is not the size such a strip has.
    """
    th, tw, factor = tile_size(size, tile)
    (h, w), tiles, _ = strip_layout(n, size, tile)
    if not factor:
        raise ValueError(f"{size[0]}x{size[1]} frames are reduced in a strip: their pixels cannot be read back")
    if tuple(strip.shape[:2]) != (h, w):
        raise ValueError(f"a strip of {n} {size[0]}x{size[1]} frames is {h}x{w}, not {strip.shape[0]}x{strip.shape[1]}")
    return [np.ascontiguousarray(strip[t:t + bh:factor, l:l + bw:factor, :3]) for t, l, bh, bw in tiles]


def strip_count(width: int, size: Tuple[int, int], tile: int = TILE) -> int:
    """How many frames a strip ``width`` pixels wide holds (its inverse of :func:`strip_layout`)."""
    _, tw, _ = tile_size(size, tile)
    return max(0, (int(width) - GAP) // (max(tw, MIN_COLUMN) + GAP))
