"""Image validation: the real format from the bytes, checked against what the embedding service takes.

Azure AI Vision multimodal embeddings accept JPEG, PNG, GIF, BMP, WEBP, ICO, TIFF and MPO, under
20 MB, with each side above 10 and below 16,000 pixels. Checking that here costs a few milliseconds
and saves a paid call (and a 400) for every file that would be refused anyway.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Final

from PIL import Image, UnidentifiedImageError

from .errors import InvalidImage

MAX_BYTES: Final = 20 * 1024 * 1024  # the service's limit: 20,971,520 bytes
MIN_SIDE_EXCLUSIVE: Final = 10
MAX_SIDE_EXCLUSIVE: Final = 16_000
ACCEPTED: Final = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "WEBP": "image/webp",
    "ICO": "image/x-icon",
    "TIFF": "image/tiff",
    "MPO": "image/jpeg",  # multi-picture JPEG (camera stereo/burst): a JPEG to any viewer
}
# Pillow's own decompression-bomb threshold (2 x MAX_IMAGE_PIXELS, about 179 megapixels): beyond it
# the pixels would take gigabytes to decode, whatever the file's size.
MAX_PIXELS: Final = 2 * 89_478_485
_EXIF_ORIENTATION: Final = 0x0112


@dataclass(frozen=True)
class ImageInfo:
    """What the bytes really are. ``width``/``height`` are as displayed (EXIF rotation applied)."""

    format: str
    content_type: str
    width: int
    height: int


def inspect_image(data: bytes) -> ImageInfo:
    """Identify and check an image from its bytes; raises :class:`InvalidImage` with the reason."""
    if not data:
        raise InvalidImage("the file is empty", code="EmptyFile")
    if len(data) > MAX_BYTES:
        raise InvalidImage(
            f"the file is {len(data):,} bytes; the embedding service takes at most {MAX_BYTES:,}", code="TooLarge"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidImage(f"decompression bomb: {exc}", code="DecompressionBomb") from None
        except UnidentifiedImageError:
            raise InvalidImage(_not_an_image(data), code="NotAnImage") from None
        except Exception as exc:  # Pillow raises many types for corrupt headers
            raise InvalidImage(f"the image header is corrupt ({exc})", code="CorruptImage") from None
        fmt = img.format or "unknown"
        if fmt not in ACCEPTED:
            raise InvalidImage(
                f"{fmt} images are not accepted by the embedding service (accepted: {', '.join(sorted(ACCEPTED))})",
                code="UnsupportedFormat",
            )
        width, height = img.size
        if not (MIN_SIDE_EXCLUSIVE < width < MAX_SIDE_EXCLUSIVE and MIN_SIDE_EXCLUSIVE < height < MAX_SIDE_EXCLUSIVE):
            raise InvalidImage(
                f"the image is {width}x{height} pixels; each side must be more than {MIN_SIDE_EXCLUSIVE} "
                f"and less than {MAX_SIDE_EXCLUSIVE:,}",
                code="BadDimensions",
            )
        if width * height > MAX_PIXELS:
            raise InvalidImage(
                f"decompression bomb: {width}x{height} is over {MAX_PIXELS:,} pixels", code="DecompressionBomb"
            )
        orientation = _orientation(img)
        _check_complete(img, fmt, data)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageInfo(format=fmt, content_type=ACCEPTED[fmt], width=width, height=height)


def _check_complete(img: Image.Image, fmt: str, data: bytes) -> None:
    """Catch truncated or corrupt files without decoding full-size pixels."""
    try:
        if fmt in ("JPEG", "MPO"):
            # A JPEG cut short has no end-of-image marker (FF D9) after the start of its scan: in the
            # entropy-coded data an FF is always followed by 00 or a restart marker, so FF D9 there can
            # only be the real end. Finding it costs ~0.1 ms, where even a 1/8-scale decode costs ~5 ms
            # at 2 MP. (Garbage inside an intact scan is left to the service, which refuses it.)
            tiles = getattr(img, "tile", None)  # ImageFile: where the scan data starts
            tile = tiles[0] if tiles else None
            scan_start = int(tile[2]) if tile is not None else 0
            if data.find(b"\xff\xd9", scan_start) < 0:
                raise OSError("image file is truncated (no end-of-image marker after the scan)")
        else:
            # verify() walks the file's structure (PNG: every chunk and its CRC) without decoding pixels.
            # It must come straight after open(), hence a fresh one.
            Image.open(io.BytesIO(data)).verify()
    except Exception as exc:
        raise InvalidImage(f"the {fmt} file is truncated or corrupt ({exc})", code="CorruptImage") from None


def _orientation(img: Image.Image) -> int:
    try:
        raw = img.info.get("exif")
        if isinstance(raw, bytes):
            # The raw block the header parse found: for PNG, getexif() would decode every pixel first.
            exif = Image.Exif()
            exif.load(raw)
        elif img.format in ("TIFF", "JPEG", "MPO", "WEBP"):
            exif = img.getexif()  # read from the header, no pixel decoding
        else:
            return 1
        value = exif.get(_EXIF_ORIENTATION, 1)
        return int(value) if isinstance(value, int) else 1
    except Exception:  # a broken EXIF block does not make the image unusable
        return 1


def _not_an_image(data: bytes) -> str:
    head = data[:256].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:2048].lower()):
        return "SVG is a vector format; the embedding service takes raster images (JPEG, PNG, ...)"
    if head.startswith((b"<!doctype html", b"<html")):
        return "the file is an HTML document, not an image"
    if head[:4] == b"%pdf":
        return "the file is a PDF document, not an image"
    if b"ftypheic" in data[:32] or b"ftypheix" in data[:32] or b"ftypmif1" in data[:32]:
        return "HEIC/HEIF images are not accepted by the embedding service; convert to JPEG"
    return "the file is not an image the embedding service can read"
