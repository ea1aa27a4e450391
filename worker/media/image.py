"""Still images through Pillow rather than FFmpeg: Pillow applies EXIF orientation (phone photos) and can
decode JPEGs at a reduced scale. ``prepare_image`` is the one call the job makes: size planned, pixels read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

from worker.api.errors import DecodeError
from worker.media.frame_plan import ModelLimits, fit_image_size

# Images with more source pixels than this are refused before decoding (a 100-megapixel photo is
# 300 MB as RGB); Pillow's own bomb check would only stop them at ~179 MP.
MAX_IMAGE_PIXELS = 100_000_000
# EXIF orientations 5-8 turn the picture by a quarter: displayed width and height swap.
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageInfo:
    width: int  # as displayed, after EXIF orientation
    height: int
    format: str  # Pillow's format name: JPEG, PNG, WEBP, ...


def probe_image(path: Path) -> ImageInfo:
    """Size and format from the header, without decoding the pixels."""
    with _open_image(path) as image:
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            width, height = height, width
        return ImageInfo(width=width, height=height, format=image.format or "unknown")


def decode_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The image upright as RGB (height, width, 3) uint8 of ``size`` = (height, width)."""
    height, width = size
    with _open_image(path) as image:
        try:
            # JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the target.
            image.draft("RGB", (width, height))
            upright = PIL.ImageOps.exif_transpose(image).convert("RGB")
            resized = upright.resize((width, height), PIL.Image.Resampling.BICUBIC, reducing_gap=3.0)
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as exc:
            raise DecodeError(f"the image cannot be decoded: {exc}") from exc
        return np.asarray(resized, dtype=np.uint8)


def _open_image(path: Path) -> PIL.Image.Image:
    try:
        image = PIL.Image.open(path)
    except PIL.UnidentifiedImageError as exc:
        raise DecodeError("not a readable image file (formats: JPEG, PNG, WebP, BMP, GIF, TIFF, ...)") from exc
    except PIL.Image.DecompressionBombError as exc:
        raise DecodeError(f"the image has more than {MAX_IMAGE_PIXELS // 1_000_000} megapixels") from exc
    except (OSError, ValueError) as exc:
        raise DecodeError(f"not a readable image file: {exc}") from exc
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image.close()
        raise DecodeError(
            f"the image is {image.width}x{image.height}, more than {MAX_IMAGE_PIXELS // 1_000_000} megapixels"
        )
    return image


@dataclass(frozen=True)
class PreparedImage:
    info: ImageInfo
    pixels: np.ndarray  # (H, W, 3) uint8 at the planned size


async def prepare_image(path: Path, limits: ModelLimits) -> PreparedImage:
    """The image at the size that fits one request of the model, read and planned in a thread (Pillow, and
    the limits' text reserve, which tokenizes)."""
    return await asyncio.to_thread(_prepare_image, path, limits)


def _prepare_image(path: Path, limits: ModelLimits) -> PreparedImage:
    info = probe_image(path)
    return PreparedImage(info, decode_image(path, fit_image_size(info.height, info.width, limits)))
