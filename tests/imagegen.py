"""Images made by the tests themselves: solid colours the fake Vision server maps to colour words."""

from __future__ import annotations

import io

from PIL import Image

COLOURS = {
    "red": (220, 20, 30),
    "green": (30, 180, 40),
    "blue": (20, 40, 220),
    "yellow": (240, 220, 20),
    "black": (5, 5, 5),
    "white": (250, 250, 250),
}


def image_bytes(
    colour: tuple[int, int, int] | str = "red", size: tuple[int, int] = (64, 48), fmt: str = "JPEG", seed: int = 0
) -> bytes:
    """An image of one colour with a few pixels varied by ``seed`` (different seeds → different bytes)."""
    rgb = COLOURS[colour] if isinstance(colour, str) else colour
    img = Image.new("RGB", size, rgb)
    for i in range(seed % 997 + 1):
        img.putpixel((i % size[0], (i // size[0]) % size[1]), ((rgb[0] + i) % 256, rgb[1], rgb[2]))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()
