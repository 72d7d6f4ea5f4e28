"""Image validation from the bytes, against the embedding service's documented limits."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from shared.errors import InvalidImage
from shared.images import MAX_BYTES, inspect_image
from tests.imagegen import image_bytes


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims the given size, with one tiny IDAT: what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "fmt", "mime", "size"),
    [
        (image_bytes("red", (64, 48), "JPEG"), "JPEG", "image/jpeg", (64, 48)),
        (image_bytes("red", (64, 48), "PNG"), "PNG", "image/png", (64, 48)),
        (image_bytes("red", (64, 48), "GIF"), "GIF", "image/gif", (64, 48)),
        (image_bytes("red", (64, 48), "BMP"), "BMP", "image/bmp", (64, 48)),
        (image_bytes("red", (64, 48), "WEBP"), "WEBP", "image/webp", (64, 48)),
        (image_bytes("red", (64, 48), "TIFF"), "TIFF", "image/tiff", (64, 48)),
        (encode(Image.new("RGB", (32, 32), "blue"), "ICO", sizes=[(32, 32)]), "ICO", "image/x-icon", (32, 32)),
        (encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"), "JPEG", "image/jpeg", (40, 30)),
        (encode(Image.new("I;16", (40, 30), 40000), "PNG"), "PNG", "image/png", (40, 30)),
        (encode(Image.new("P", (40, 30), 3), "PNG", transparency=3), "PNG", "image/png", (40, 30)),
    ],
)
def test_accepted_formats_are_identified_from_the_bytes(
    data: bytes, fmt: str, mime: str, size: tuple[int, int]
) -> None:
    info = inspect_image(data)
    assert (info.format, info.content_type, (info.width, info.height)) == (fmt, mime, size)


def test_animated_gif_and_webp_are_accepted() -> None:
    frames = [Image.new("RGB", (30, 20), c) for c in ("red", "blue", "green")]
    for fmt in ("GIF", "WEBP"):
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        assert inspect_image(data).format == fmt


def test_exif_rotation_gives_the_displayed_size() -> None:
    img = Image.new("RGB", (80, 40), "red")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    info = inspect_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert (info.width, info.height) == (40, 80)


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"", "EmptyFile", "empty"),
        (b"\0" * (MAX_BYTES + 1), "TooLarge", "at most 20,971,520"),
        (b"hello, this is text", "NotAnImage", "not an image"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "NotAnImage", "SVG"),
        (b"<!DOCTYPE html><html></html>", "NotAnImage", "HTML"),
        (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", "NotAnImage", "HEIC"),
        (image_bytes("red", (9, 50), "PNG"), "BadDimensions", "9x50"),
        (png_header_only(16_001, 20), "BadDimensions", "16001x20"),
        (png_header_only(15_000, 15_000), "DecompressionBomb", "decompression bomb"),
        (image_bytes("red", (400, 300), "JPEG")[:700], "CorruptImage", "truncated"),
        (image_bytes("red", (400, 300), "PNG")[:150], "CorruptImage", "truncated"),
        (encode(Image.new("RGB", (30, 30)), "PCX"), "UnsupportedFormat", "PCX"),
    ],
)
def test_refused_files_say_why(data: bytes, code: str, words: str) -> None:
    with pytest.raises(InvalidImage) as caught:
        inspect_image(data)
    assert caught.value.code == code
    assert words in caught.value.message
