"""2D image files (PNG, TIFF, JPEG, GIF, BMP) read with their real bit depth and frame count, or refused by name.

MONAI's ``PILReader`` returns ``np.asarray`` of whatever PIL opened, and bundles that need RGB pass a converter such
as ``lambda image: image.convert("RGB")``. On hostile input that goes wrong without a word: PIL's ``convert`` clips
a 16-bit greyscale PNG to 8 bits (99.6 % of the pixels of a typical 16-bit image saturate at 255); a multi-frame
TIFF gives its first frame; a truncated PNG fails as "cannot find a suitable reader"; a PNG that declares 50000 x 50000
pixels fails with PIL's ``DecompressionBombError`` and no file name. :class:`Image2DReader` checks the header first
(:func:`image_problem`: declared size against ``max_pixels``, frame count), decodes right away so a truncated file is
named as truncated, and turns the pixels into an array without losing depth: ``channels=3`` replicates a greyscale
image (8, 16 or 32 bit, or float) into three equal channels at its own depth, resolves palettes, drops an opaque
alpha channel and converts CMYK / YCbCr / LAB / HSV with PIL; ``channels=1`` refuses colour images.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.config import PathLike
from monai.data import PILReader
from monai.utils import MetaKeys, ensure_tuple
from PIL import Image

from monai_unet2.data.volumes import VolumeFileError

__all__ = ["DEFAULT_MAX_PIXELS", "Image2DReader", "image_problem"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS: 1024 * 1024 * 1024 // 4 // 3
_GREY_MODES = ("1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_CONVERTED_TO_RGB = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")


def _open(path: str, max_pixels: int | None) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            declared = re.search(r"\((\d+) pixels\)", str(error))
            count = f"{int(declared.group(1)):,} pixels" if declared else "more pixels than PIL allows"
            raise VolumeFileError(
                f"{path}: image declares {count} (a decompression bomb, or far too large): refused before decoding"
            ) from None
    if max_pixels is not None and image.width * image.height > max_pixels:
        image.close()
        raise VolumeFileError(
            f"{path}: image declares {image.width} x {image.height} = {image.width * image.height:,} pixels, more "
            f"than max_pixels={max_pixels:,}: refused before decoding"
        )
    return image


def image_problem(path: PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """Why a 2D image file must not be decoded, from its header alone, or ``None``.

    Args:
        path: the image file.
        max_pixels: the largest width x height accepted; ``None``: only PIL's own decompression-bomb limit.
    """
    try:
        image = _open(str(path), max_pixels)
    except VolumeFileError as error:
        return str(error).removeprefix(f"{path}: ")
    with image:
        frames = int(getattr(image, "n_frames", 1) or 1)
        if frames > 1:
            return (
                f"a {image.format} file with {frames} frames (pages); reading only the first would drop the others: "
                "save each frame as its own file"
            )
        if image.width == 0 or image.height == 0:
            return f"image of {image.width} x {image.height} pixels: no pixels"
    return None


def _png_bit_depth(path: str) -> int | None:
    with open(path, "rb") as stream:
        head = stream.read(26)
    return head[24] if len(head) == 26 and head[12:16] == b"IHDR" else None


def _greyscale_palette(image: Image.Image) -> bool:
    palette = np.asarray(image.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return bool(palette.size) and bool(
        (palette[:, 0] == palette[:, 1]).all() and (palette[:, 1] == palette[:, 2]).all()
    )


def image_array(image: Image.Image, channels: int | None, path: str) -> np.ndarray:
    """The pixels of a decoded PIL image as ``(height, width)`` or ``(height, width, channels)``, at full depth.

    Args:
        image: a decoded PIL image.
        channels: ``None`` keeps what the file holds; ``3`` gives three channels (greyscale replicated at its own bit
            depth, palettes resolved, an opaque alpha dropped); ``1`` gives one channel and refuses colour images.
        path: named in messages.
    """
    mode = image.mode
    if mode == "P":
        image = image.convert("L" if _greyscale_palette(image) and channels != 3 else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in _CONVERTED_TO_RGB:
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] in (2, 4) and channels is not None:
        alpha = array[..., -1]
        if int(alpha.min()) < int(np.iinfo(array.dtype).max if array.dtype.kind in "ui" else 1):
            logger.warning("%s: transparent pixels (alpha < max); the alpha channel is dropped", path)
        array = array[..., :-1]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    if channels is None or (array.ndim == 2 and channels == 1) or (array.ndim == 3 and array.shape[-1] == channels):
        return array
    if array.ndim == 2 and channels == 3:
        return np.repeat(array[..., None], 3, axis=-1)
    raise VolumeFileError(
        f"{path}: a {mode} image with {array.shape[-1] if array.ndim == 3 else 1} channel(s) where {channels} "
        "channel(s) are expected"
    )


class Image2DReader(PILReader):
    """MONAI's ``PILReader`` that refuses multi-frame files and oversized headers by name, names a truncated file as
    truncated, and keeps the bit depth of 16-bit and float images; ``channels`` replaces RGB converters.

    Output layout and metadata are ``PILReader``'s (``reverse_indexing``: array axes (width, height[, channel])),
    so a pipeline switching from ``PILReader`` sees the same shapes for 8-bit RGB and greyscale files.

    Args:
        channels: ``None`` (as stored), ``1`` (greyscale; colour images are refused) or ``3`` (RGB; greyscale images
            of any depth are replicated into three equal channels, never clipped to 8 bits).
        max_pixels: the largest width x height decoded (default PIL's decompression-bomb threshold, 89,478,485).
        reverse_indexing: swap the first two axes, as ``PILReader`` does by default.
        kwargs: passed to ``PIL.Image.open``.
    """

    def __init__(
        self,
        channels: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        reverse_indexing: bool = True,
        **kwargs: Any,
    ) -> None:
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
        super().__init__(converter=None, reverse_indexing=reverse_indexing, **kwargs)
        self.channels = channels
        self.max_pixels = max_pixels

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True for PNG, JPEG, TIFF, GIF and BMP file names."""
        suffixes = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
        return all(f"{name}".lower().endswith(suffixes) for name in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        """Check each file's header (:func:`image_problem`) and decode it now, so a truncated file is named here.

        Args:
            data: one file or several (stacked as channels by ``get_data``).
            kwargs: passed to ``PIL.Image.open``.
        """
        images = []
        for name in ensure_tuple(data):
            path = f"{name}"
            problem = image_problem(path, self.max_pixels)
            if problem is not None:
                raise VolumeFileError(f"{path}: {problem}")
            image = _open(path, self.max_pixels)
            try:
                image.load()
            except (OSError, SyntaxError, ValueError) as error:
                raise VolumeFileError(f"{path}: truncated or corrupt image data ({error})") from error
            if image.format == "PNG" and image.mode in ("RGB", "RGBA") and _png_bit_depth(path) == 16:
                logger.warning("%s: a 16-bit colour PNG: PIL reads it at 8 bits per channel (the high bytes)", path)
            orientation = image.getexif().get(0x0112, 1)
            if orientation not in (0, 1):
                logger.warning(
                    "%s: EXIF orientation %s: the pixels are read as stored, not rotated; viewers that apply it show "
                    "the image turned against its segmentation",
                    path,
                    orientation,
                )
            image.filename = path
            images.append(image)
        return images if len(images) > 1 else images[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Arrays at full depth, in ``PILReader``'s layout and metadata.

        Args:
            img: what :meth:`read` returned.
        """
        arrays, meta = [], {}
        for image in ensure_tuple(img):
            array = image_array(image, self.channels, getattr(image, "filename", "") or "<image>")
            arrays.append(np.moveaxis(array, 0, 1) if self.reverse_indexing else array)
            header = self._get_meta_dict(image)
            header[MetaKeys.SPATIAL_SHAPE] = np.asarray(arrays[-1].shape[:2])
            header[MetaKeys.ORIGINAL_CHANNEL_DIM] = -1 if arrays[-1].ndim == 3 else float("nan")
            if not meta:
                meta = header
        if len(arrays) == 1:
            return arrays[0], meta
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), meta
