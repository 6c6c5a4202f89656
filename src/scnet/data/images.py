"""Image files read one way everywhere (training, evaluation, predict, cam, erf), with bounded work.

Two limits are checked before any pixel is decoded or resized: the decoded size (Pillow's decompression-bomb limit,
``Image.MAX_IMAGE_PIXELS``, as an error rather than Pillow's warning below twice it) and the size after resizing
(a 373-byte PNG of 100000x1 pixels is 22400000x224 once its short side is 224: gigabytes). Deeper images are
scaled, never clipped: a 16-bit grayscale file means the same thing to every tool.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import DataError

__all__ = ["MAX_RESIZED_PIXELS", "ImageFileError", "check_resized", "open_image", "unreadable"]


class ImageFileError(DataError):
    """An image file that cannot be used; ``reason`` says why without the path (for lists of such files)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

MAX_RESIZED_PIXELS = 1 << 24  # 16.8 M pixels after resizing: a 256 px short side with a 65,536 px long side


def check_resized(size: tuple[int, int], short_side: int, path: Union[str, Path]) -> None:
    """Refuse an image (width, height) whose shorter side resized to ``short_side`` would exceed MAX_RESIZED_PIXELS."""
    width, height = size
    short, long = min(width, height), max(width, height)
    if short < 1:
        raise ImageFileError(f"{path} is empty ({width}x{height} px)", f"empty, {width}x{height} px")
    resized_long = long * short_side / short
    if resized_long * short_side > MAX_RESIZED_PIXELS:
        reason = (f"{width}x{height} px: resizing its short side to {short_side} would make it {resized_long:,.0f} px long, "
                  f"over the limit of {MAX_RESIZED_PIXELS:,} pixels")
        raise ImageFileError(f"{path} is {reason}; crop it first", reason)


def open_image(path: Union[str, Path], channels: int, short_side: Optional[int] = None, data: Optional[bytes] = None):
    """A PIL image of ``channels`` (1: 8-bit grayscale "L", 3: "RGB"), decoded within Pillow's pixel limit and, when
    it is to be resized to ``short_side``, refused before decoding if that would exceed MAX_RESIZED_PIXELS.

    16-bit grayscale ("I;16*", and "I" holding 16-bit values) is scaled by 255/65535; 32-bit float grayscale ("F")
    is read as intensities in [0, 1] and scaled by 255 (a float image with values outside [0, 1] has no stated
    range and is refused); an EXIF orientation is applied (a phone's portrait photo is upright); alpha is dropped; palettes, CMYK and the rest are converted by Pillow. Only regular files
    are opened (a FIFO would wait for a writer forever). Raises ``DataError`` with one line for every unreadable file.
    ``data``: the encoded image itself (a member of a shard, a dataset's cell), ``path`` then only names it.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if data is None and isinstance(path, (str, Path)) and Path(path).exists() and not Path(path).is_file():
        raise ImageFileError(f"{path} is not a regular file (a folder, FIFO or device); refused before reading", "not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit is an error, not a warning
            with Image.open(path if data is None else io.BytesIO(data)) as img:
                if short_side is not None:
                    check_resized(img.size, short_side, path)
                img.load()
                img = _eight_bits(ImageOps.exif_transpose(img), path)  # upright as a camera's EXIF says, everywhere alike
                return img.convert("L" if channels == 1 else "RGB")
    except ImageFileError:  # the size checks' own words
        raise
    except FileNotFoundError:
        raise ImageFileError(f"image not found: {path}", "not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        reason = f"declares more pixels than allowed ({str(err).splitlines()[0]})"
        raise ImageFileError(f"{path} {reason}; refused before decoding", reason) from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        said = str(err).splitlines()[0] if str(err) else "cannot decode"
        if isinstance(err, UnidentifiedImageError):  # Pillow names the file (or a BytesIO object): the message has it
            said = "no image format Pillow knows"
        reason = f"{type(err).__name__}: {said}"
        raise ImageFileError(f"cannot read {path} as an image ({reason})", reason) from None


def _eight_bits(img, path: Union[str, Path, Any] = "the image"):
    """16- and 32-bit integer grayscale to 8 bits by scaling (values above 65535 clip), float grayscale from [0, 1],
    not by Pillow's clipping (which turns a [0, 1] float image black)."""
    from PIL import Image

    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)  # (H, W)
        if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0):
            low, high = np.nanmin(arr), np.nanmax(arr)
            reason = f"float image with values from {low:g} to {high:g}, not intensities in [0, 1]"
            raise ImageFileError(f"{path} is a {reason}; scale it to [0, 1] (or save it as 8 or 16 bits)", reason)
        return Image.fromarray(np.round(arr * 255.0).astype(np.uint8), mode="L")
    if img.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return img
    arr = np.asarray(img, dtype=np.float64)  # (H, W)
    return Image.fromarray(np.round(np.clip(arr, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8), mode="L")


def unreadable(path: str, short_side: int, data: Optional[bytes] = None) -> Optional[str]:
    """Why ``path`` (or the encoded image ``data`` it names) cannot be used (None when it can): PIL cannot decode it,
    it declares more pixels than allowed, or resizing its short side to ``short_side`` would exceed the resize limit
    (``images.open_image``)."""
    try:
        open_image(path, 3, short_side, data)
    except ImageFileError as e:
        return e.reason
    return None
