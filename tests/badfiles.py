"""The bad-input corpus: files a hostile or careless uploader puts in the images container, each with
the outcome ingestion must reach (indexed as what the bytes really are, or a recorded failure and its
code). Everything is generated here, deterministically; nothing is downloaded or checked in.

Also the tallies the reliability suite reports (faults injected, hostile inputs, images checked and
lost): each test module counts what it really did and stores the totals in pytest's cache under
``reliability/<module>`` (``pytest --cache-show 'reliability/*'``).
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from PIL import Image

from tests.imagegen import image_bytes

MAX_BYTES = 20 * 1024 * 1024  # the service's limit, as shared.images.MAX_BYTES


@dataclass(frozen=True)
class BadFile:
    """One corpus entry: blob name, how to make its bytes, and the outcome ingestion must reach.

    ``expect`` is ``indexed`` (then ``content_type`` and ``size`` — displayed width x height — are
    checked) or ``failed`` (then ``code``, and ``reason`` must appear in the recorded reason).
    ``via_service``: the local checks cannot tell, so the (fake) embedding service refuses it with a
    400 and that refusal is what gets recorded.
    """

    id: str
    name: str
    make: Callable[[], bytes]
    expect: str
    code: str | None = None
    reason: str | None = None
    content_type: str | None = None
    size: tuple[int, int] | None = None
    via_service: bool = False

    def data(self) -> bytes:
        return _bytes(self.id)


# --- builders -------------------------------------------------------------------------------------


def _save(img: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def _gradient(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A picture with some detail (so encoders produce real entropy-coded data, not a few bytes)."""
    w, h = size
    img = Image.new("RGB", size)
    img.putdata(
        [((x * 255) // max(1, w - 1), (y * 255) // max(1, h - 1), (x * y) % 256) for y in range(h) for x in range(w)]
    )
    return img if mode == "RGB" else img.convert(mode)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_raw(
    width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None, *, full: bool = True
) -> bytes:
    """A PNG written by hand: ``rows`` are the unfiltered scanline bytes of *one* row, repeated;
    ``full=False`` writes the header and only a token of pixel data (a header-only bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    if full and rows is not None:
        packer = zlib.compressobj(9)
        line = b"\0" + rows
        parts = [packer.compress(line) for _ in range(height)]
        idat = b"".join(parts) + packer.flush()
    else:
        idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_bomb_header(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` RGB pixels."""
    return png_raw(width, height, 8, 2, None, full=False)


def png_bomb_real(side: int) -> bytes:
    """A complete, valid 1-bit PNG of ``side`` x ``side`` zeros: a few kB that decode to side² pixels."""
    return png_raw(side, side, 1, 0, b"\0" * ((side + 7) // 8))


def png_corrupt_idat() -> bytes:
    """Every chunk's CRC is right, but the compressed pixel data is garbage: only decoding tells."""
    ihdr = struct.pack(">IIBBBBB", 64, 48, 8, 2, 0, 0, 0)
    garbage = bytes(random.Random(7).randrange(256) for _ in range(400))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", garbage) + _chunk(b"IEND", b"")


def png_bad_crc(chunk: bytes) -> bytes:
    """A PNG with one flipped bit in the CRC of its first ``chunk`` (IHDR or IDAT)."""
    data = bytearray(_save(_gradient((64, 48)), "PNG"))
    start = data.index(chunk) - 4
    length = struct.unpack(">I", data[start : start + 4])[0]
    data[start + 8 + length] ^= 0x01
    return bytes(data)


def png_16bit_rgb() -> bytes:
    """48-bit RGB, which Pillow itself does not write."""
    row = b"".join(struct.pack(">HHH", 60000, 1000 * (x % 50), 20000) for x in range(64))
    return png_raw(64, 48, 16, 2, row)


def gif_bomb_screen() -> bytes:
    """A GIF whose logical screen is 15000 x 15000 around one tiny frame."""
    gif = bytearray(_save(Image.new("P", (16, 16)), "GIF"))
    gif[6:10] = struct.pack("<HH", 15000, 15000)
    return bytes(gif)


def jpeg_exif_rotated() -> bytes:
    """80 x 40 pixels stored, EXIF orientation 6: displayed 40 wide and 80 high."""
    img = _gradient((80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(img, "JPEG", exif=exif.tobytes())


def jpeg_broken_exif() -> bytes:
    """A JPEG with an APP1 'Exif' segment full of garbage."""
    jpeg = image_bytes("green", (64, 48))
    garbage = b"Exif\0\0" + b"MM\0*\0\0\0\x08\xff\xff" + bytes(range(200))
    app1 = b"\xff\xe1" + struct.pack(">H", len(garbage) + 2) + garbage
    return jpeg[:2] + app1 + jpeg[2:]


def heic_like() -> bytes:
    """An ISO-BMFF ``ftyp`` box of brand ``heic``, as an iPhone writes (Pillow has no HEIC decoder)."""
    ftyp = struct.pack(">I", 24) + b"ftypheic" + b"\0\0\0\0" + b"mif1heic"
    meta = struct.pack(">I", 32) + b"meta" + b"\0" * 24
    return ftyp + meta + bytes(random.Random(3).randrange(256) for _ in range(2000))


def mpo() -> bytes:
    return _save(_gradient((64, 48)), "MPO", save_all=True, append_images=[_gradient((64, 48)).rotate(180)])


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (64, 48), c) for c in ((220, 20, 30), (20, 40, 220), (30, 180, 40))]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def padded(size: int) -> bytes:
    """A valid JPEG followed by zeros up to ``size`` bytes (viewers ignore what follows the image)."""
    head = image_bytes("red", (64, 48))
    return head + b"\0" * (size - len(head))


def random_bytes(n: int = 4096, seed: int = 11) -> bytes:
    return random.Random(seed).randbytes(n)


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="48"><rect width="64" height="48" fill="red"/></svg>'
XML_SVG = b'<?xml version="1.0" encoding="UTF-8"?>\n<!-- a drawing -->\n' + SVG
HTML = b"<!DOCTYPE html><html><head><title>x</title></head><body><img src=x onerror=alert(1)></body></html>"
PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
BIG_JPEG = _gradient((400, 300))


def _ok(id_: str, name: str, make: Callable[[], bytes], content_type: str, size: tuple[int, int]) -> BadFile:
    return BadFile(id_, name, make, "indexed", content_type=content_type, size=size)


def _bad(id_: str, name: str, make: Callable[[], bytes], code: str, reason: str | None = None) -> BadFile:
    return BadFile(id_, name, make, "failed", code=code, reason=reason)


def _refused(id_: str, name: str, make: Callable[[], bytes]) -> BadFile:
    return BadFile(id_, name, make, "failed", code="InvalidImageFormat", via_service=True)


CORPUS: tuple[BadFile, ...] = (
    # Not images at all.
    _bad("zero-bytes", "empty.jpg", lambda: b"", "EmptyFile"),
    _bad("one-byte", "one.jpg", lambda: b"\xff", "NotAnImage"),
    _bad("text-as-jpg", "notes.jpg", lambda: b"just some text, not a picture\n" * 20, "NotAnImage"),
    _bad("html-as-jpg", "page.jpg", lambda: HTML, "NotAnImage", "HTML"),
    _bad("svg", "drawing.svg", lambda: SVG, "NotAnImage", "SVG"),
    _bad("svg-xml-prolog-as-png", "drawing.png", lambda: XML_SVG, "NotAnImage", "SVG"),
    _bad("pdf-as-jpg", "scan.jpg", lambda: PDF, "NotAnImage", "PDF"),
    _bad("heic-like", "IMG_0001.HEIC", heic_like, "NotAnImage", "HEIC"),
    _bad("random-bytes", "noise.jpg", random_bytes, "NotAnImage"),
    _bad("jpeg-magic-only", "magic.jpg", lambda: b"\xff\xd8\xff\xe0", "NotAnImage"),
    # Broken images.
    _bad("truncated-jpeg-header", "cut-head.jpg", lambda: _save(BIG_JPEG, "JPEG")[:300], "CorruptImage"),
    _bad("truncated-jpeg-scan", "cut-scan.jpg", lambda: _save(BIG_JPEG, "JPEG")[:4000], "CorruptImage"),
    _bad("truncated-png", "cut.png", lambda: _save(BIG_JPEG, "PNG")[:5000], "CorruptImage"),
    # A broken header is not recognised as PNG at all; a broken data chunk is found by the chunk walk.
    _bad("png-bad-ihdr-crc", "crc-head.png", lambda: png_bad_crc(b"IHDR"), "NotAnImage"),
    _bad("png-bad-idat-crc", "crc-data.png", lambda: png_bad_crc(b"IDAT"), "CorruptImage"),
    # Only decoding the pixels finds these, which the local checks do not do for these formats (it
    # would cost the full decode on every upload): the service refuses them with a 400
    # InvalidImageFormat, and that refusal is recorded. One paid call each.
    _refused("png-corrupt-idat-valid-crc", "garbled.png", png_corrupt_idat),
    _refused("truncated-gif", "cut.gif", lambda: _save(BIG_JPEG, "GIF")[:20000]),
    _refused("truncated-tiff", "cut.tiff", lambda: _save(BIG_JPEG, "TIFF")[:100000]),
    _refused("truncated-bmp", "cut.bmp", lambda: _save(BIG_JPEG, "BMP")[:100000]),
    # Images the service does not take.
    _bad("decompression-bomb-header-15000", "bomb.png", lambda: png_bomb_header(15000, 15000), "DecompressionBomb"),
    _bad("decompression-bomb-real-15000", "bomb-real.png", lambda: png_bomb_real(15000), "DecompressionBomb"),
    _bad("decompression-bomb-12000", "bomb-12k.png", lambda: png_bomb_real(12000), "DecompressionBomb"),
    _bad("gif-bomb-logical-screen", "bomb.gif", gif_bomb_screen, "DecompressionBomb"),
    _bad("side-9px", "thin.png", lambda: image_bytes("red", (9, 40), "PNG"), "BadDimensions"),
    _bad("side-10px", "ten.png", lambda: image_bytes("red", (40, 10), "PNG"), "BadDimensions"),
    _bad("side-16000px", "wide.png", lambda: image_bytes("red", (16000, 12), "PNG"), "BadDimensions"),
    _bad("side-16001px", "wider.png", lambda: image_bytes("red", (12, 16001), "PNG"), "BadDimensions"),
    _bad("25MB", "huge.jpg", lambda: padded(25 * 1024 * 1024), "TooLarge"),
    _bad("20MB-plus-1-byte", "limit.jpg", lambda: padded(MAX_BYTES + 1), "TooLarge"),
    _bad("avif", "photo.avif", lambda: _save(_gradient((64, 48)), "AVIF"), "UnsupportedFormat"),
    _bad("ppm", "photo.jpg", lambda: _save(_gradient((64, 48)), "PPM"), "UnsupportedFormat"),
    _bad("pcx", "photo.pcx", lambda: _save(_gradient((64, 48)), "PCX"), "UnsupportedFormat"),
    # Unusual but valid: indexed as what the bytes are, whatever the name says.
    _ok("side-11px", "eleven.png", lambda: image_bytes("red", (11, 40), "PNG"), "image/png", (11, 40)),
    _ok("side-15999px", "banner.png", lambda: image_bytes("red", (15999, 11), "PNG"), "image/png", (15999, 11)),
    _ok("cmyk-jpeg", "print.jpg", lambda: _save(_gradient((64, 48), "CMYK"), "JPEG"), "image/jpeg", (64, 48)),
    _ok("greyscale-jpeg", "grey.jpg", lambda: _save(_gradient((64, 48), "L"), "JPEG"), "image/jpeg", (64, 48)),
    _ok("progressive-jpeg", "prog.jpg", lambda: _save(BIG_JPEG, "JPEG", progressive=True), "image/jpeg", (400, 300)),
    _ok(
        "jpeg-trailing-garbage",
        "tail.jpg",
        lambda: _save(BIG_JPEG, "JPEG") + random_bytes(3000),
        "image/jpeg",
        (400, 300),
    ),
    _ok("exif-rotated-jpeg", "rotated.jpg", jpeg_exif_rotated, "image/jpeg", (40, 80)),
    _ok("broken-exif-jpeg", "exif.jpg", jpeg_broken_exif, "image/jpeg", (64, 48)),
    _ok("mpo", "stereo.mpo", mpo, "image/jpeg", (64, 48)),
    _ok("png-16bit-grey", "deep.png", lambda: _save(Image.new("I;16", (64, 48), 40000), "PNG"), "image/png", (64, 48)),
    _ok("png-16bit-rgb", "deep-rgb.png", png_16bit_rgb, "image/png", (64, 48)),
    _ok(
        "png-palette-transparency",
        "palette.png",
        lambda: _save(_gradient((64, 48), "P"), "PNG", transparency=0),
        "image/png",
        (64, 48),
    ),
    _ok("png-1bit", "mono.png", lambda: _save(Image.new("1", (64, 48), 1), "PNG"), "image/png", (64, 48)),
    _ok("png-named-jpg", "actually-png.jpg", lambda: image_bytes("blue", (64, 48), "PNG"), "image/png", (64, 48)),
    _ok("animated-gif", "anim.gif", lambda: animated("GIF"), "image/gif", (64, 48)),
    _ok("animated-webp", "anim.webp", lambda: animated("WEBP"), "image/webp", (64, 48)),
    _ok(
        "tiff", "scan.tiff", lambda: _save(_gradient((64, 48)), "TIFF", compression="tiff_lzw"), "image/tiff", (64, 48)
    ),
    _ok("tiff-16bit", "scan16.tif", lambda: _save(Image.new("I;16", (64, 48), 40000), "TIFF"), "image/tiff", (64, 48)),
    _ok(
        "ico",
        "favicon.ico",
        lambda: _save(Image.new("RGBA", (48, 48), (255, 0, 0, 128)), "ICO"),
        "image/x-icon",
        (48, 48),
    ),
    _ok("bmp", "old.bmp", lambda: _save(_gradient((64, 48)), "BMP"), "image/bmp", (64, 48)),
    # Hostile names around a good image: stored under exactly the name the blob has.
    _ok(
        "name-unicode-spaces",
        "ünï cödé/空 白 🖼.png",
        lambda: image_bytes("green", (40, 30), "PNG"),
        "image/png",
        (40, 30),
    ),
    _ok(
        "name-sql-metachars",
        "x'; DROP TABLE images;--\".png",
        lambda: image_bytes("red", (40, 30), "PNG"),
        "image/png",
        (40, 30),
    ),
    _ok(
        "name-percent-encoded", "a%2F..%2Fb%00.png", lambda: image_bytes("blue", (40, 30), "PNG"), "image/png", (40, 30)
    ),
    _ok(
        "name-1000-chars",
        "d/" + "n" * 994 + ".png",
        lambda: image_bytes("white", (40, 30), "PNG"),
        "image/png",
        (40, 30),
    ),
)

_BY_ID = {f.id: f for f in CORPUS}
assert len(_BY_ID) == len(CORPUS), "corpus ids must be unique"


@cache
def _bytes(id_: str) -> bytes:
    return _BY_ID[id_].make()


# --- tallies ----------------------------------------------------------------------------------------


class Tally:
    """Counts of one test module, stored in pytest's cache when the module ends."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.counts: Counter[str] = Counter()

    def add(self, what: str, n: int = 1) -> None:
        self.counts[what] += n

    def save(self, config: Any) -> None:
        cache_ = getattr(config, "cache", None)
        if cache_ is not None:
            cache_.set(f"reliability/{self.module}", dict(sorted(self.counts.items())))
