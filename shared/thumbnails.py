"""Small previews for result grids, made once at ingest: people browse thumbnails, not 12 MP originals."""

from __future__ import annotations

import io
import warnings
from typing import Final

from PIL import Image, ImageOps

THUMBNAIL_MAX_SIDE: Final = 320
THUMBNAIL_CONTENT_TYPE: Final = "image/jpeg"


def make_thumbnail(data: bytes, max_side: int = THUMBNAIL_MAX_SIDE) -> bytes:
    """A JPEG at most ``max_side`` pixels on its longer side, upright (EXIF rotation applied).

    Call it only on bytes that passed :func:`shared.images.inspect_image` (size and pixel limits).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        source = Image.open(io.BytesIO(data))
        if source.format in ("JPEG", "MPO"):
            # Decode at the smallest scale (1/2 .. 1/8) that still covers the thumbnail: a few ms.
            source.draft("RGB", (max_side, max_side))
        source.seek(0)  # first frame of animations
        img: Image.Image = ImageOps.exif_transpose(source)
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        if img.mode in ("RGBA", "LA", "P", "PA"):
            img = img.convert("RGBA")
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img, mask=img.getchannel("A"))
            img = background
        elif img.mode != "RGB":
            img = _to_rgb(img)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=82, optimize=True, progressive=True)
        return out.getvalue()


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits before converting, or everything turns white.
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")
