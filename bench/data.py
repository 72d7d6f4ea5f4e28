"""Synthetic data for the benchmarks: clustered unit vectors, catalogue rows and realistic images.

Vectors come in two kinds, both 1024-d, unit length, in clusters, from a fixed seed:

- ``embedding`` (the default): what image embeddings look like. Their intrinsic dimension is low
  (tens of directions carry the variation, not 1024) and they form groups (subjects, styles). Here:
  200 cluster centres in a random 64-d subspace, each point its centre plus noise inside that
  subspace, plus a little noise in all 1024 dimensions.
- ``isotropic``: the hard case for any approximate index: each point its centre plus Gaussian
  noise of the same size in all 1024 dimensions, so within a cluster every point is about as far
  from a query as every other (cosine ~0.5 ± 0.02) and the true top 10 barely stands out.

Queries are drawn from the same distribution (same centres and subspace) but are not in the collection.

Images: smooth gradients and shapes plus low-amplitude sensor-like noise, so JPEG and PNG compress
them about as they compress photographs (JPEG q90: ~0.3 bytes per pixel; PNG: ~1.6 bytes per pixel).
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from bench.common import CACHE
from shared.catalogue import ImageRecord

DIM = 1024
SEED = 20_260_701
CLUSTERS = 200
LATENT = 64  # intrinsic dimension of the embedding-like kind
KINDS = ("embedding", "isotropic")

# Name buckets: name "pNN/…" with NN = i % 100, so prefix "p0" matches 10 % and "p00/" 1 % of rows;
# every tenth row (i % 10 == 3) is a PNG, the others JPEG: content_type image/png matches 10 %.
FILTERS = {
    "prefix 10 %": {"prefix": "p0"},
    "prefix 1 %": {"prefix": "p00/"},
    "content type 10 %": {"content_types": ("image/png",)},
}


def _unit_rows(a: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    return a


class _Generator:
    """Draws points of one kind around fixed centres; the collection and the queries share them."""

    def __init__(self, kind: str, seed: int) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        self.kind = kind
        rng = np.random.default_rng(seed)
        if kind == "embedding":
            self.basis = np.linalg.qr(rng.standard_normal((DIM, LATENT)))[0].astype(np.float32)  # DIM x LATENT
            self.centres = _unit_rows(rng.standard_normal((CLUSTERS, LATENT)).astype(np.float32))
        else:
            self.centres = _unit_rows(rng.standard_normal((CLUSTERS, DIM)).astype(np.float32))

    def draw(self, n: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
        out = np.empty((n, DIM), dtype=np.float32)
        for start in range(0, n, 20_000):
            m = min(n, start + 20_000) - start
            labels = rng.integers(0, CLUSTERS, m)
            if self.kind == "embedding":
                latent = self.centres[labels] + rng.standard_normal((m, LATENT)).astype(np.float32) * (
                    0.7 / np.sqrt(LATENT)
                )
                block = latent @ self.basis.T
                block += rng.standard_normal((m, DIM)).astype(np.float32) * (0.15 / np.sqrt(DIM))
            else:
                block = self.centres[labels] + rng.standard_normal((m, DIM)).astype(np.float32) / np.sqrt(DIM)
            out[start : start + m] = _unit_rows(block)
        return out


def clustered(n: int, *, kind: str = "embedding", seed: int = SEED) -> npt.NDArray[np.float32]:
    """``n`` unit vectors (float32) of the given kind."""
    return _Generator(kind, seed).draw(n, np.random.default_rng(seed + 1))


def queries(n: int, *, kind: str = "embedding", seed: int = SEED, sample: int = 0) -> npt.NDArray[np.float32]:
    """Query vectors from the same distribution as :func:`clustered` (same seed), not in the collection;
    ``sample`` > 0 draws another set from the same distribution."""
    rng = np.random.default_rng(seed + 2 if sample == 0 else (seed, 2, sample))
    return _Generator(kind, seed).draw(n, rng)


def name_of(i: int) -> str:
    return f"p{i % 100:02d}/{i:07d}.{'png' if i % 10 == 3 else 'jpg'}"


def records(n: int, container: str = "images") -> list[ImageRecord]:
    """Catalogue rows for the synthetic vectors: names and content types as FILTERS expects."""
    out = []
    for i in range(n):
        name = name_of(i)
        png = i % 10 == 3
        out.append(
            ImageRecord(
                container=container,
                name=name,
                sha256=hashlib.sha256(name.encode()).digest(),
                content_type="image/png" if png else "image/jpeg",
                width=1024,
                height=768,
                byte_size=250_000,
                etag=f'"0x{i:016X}"',
            )
        )
    return out


def exact_top_k(
    matrix: npt.NDArray[np.float32], query: npt.NDArray[np.float32], k: int, mask: npt.NDArray[np.bool_] | None = None
) -> list[int]:
    """Row numbers of the k nearest rows by cosine distance (all rows unit length), best first."""
    scores = matrix @ query
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    top = np.argpartition(-scores, k)[:k]
    return [int(i) for i in top[np.argsort(-scores[top], kind="stable")]]


# --- images --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SizeClass:
    name: str
    width: int
    height: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


SIZE_CLASSES = (
    SizeClass("0.3 MP", 640, 480),
    SizeClass("2 MP", 1920, 1080),
    SizeClass("5 MP", 2592, 1944),
    SizeClass("12 MP", 4000, 3000),
)


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """An RGB image with gradients, a few soft shapes and noise: compresses like a photograph."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    base = rng.uniform(40, 200, 3).astype(np.float32)
    tilt = rng.uniform(-80, 80, (3, 2)).astype(np.float32)
    img = np.empty((height, width, 3), dtype=np.float32)
    for c in range(3):
        img[:, :, c] = base[c] + tilt[c, 0] * x + tilt[c, 1] * y
    for _ in range(6):  # soft blobs: large smooth areas with edges, as objects in a scene
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        blob = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (r * r)))
        img += blob[:, :, None] * rng.uniform(-90, 90, 3).astype(np.float32)
    # Sensor-like noise, in a few chunks to keep peak memory of a 12 MP image low.
    for start in range(0, height, 512):
        stop = min(height, start + 512)
        img[start:stop] += rng.normal(0.0, 6.0, (stop - start, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        img.save(out, format="JPEG", quality=90)
    else:
        img.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def image_file(size: SizeClass, fmt: str, seed: int, cache: Path = CACHE) -> bytes:
    """The encoded image for (size, format, seed), made once and cached on disk."""
    path = cache / "images" / f"{size.width}x{size.height}-{seed}.{fmt.lower()}"
    if path.exists():
        return path.read_bytes()
    data = encode(photo_like(size.width, size.height, seed), fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


def largest_png(limit: int = 20 * 1024 * 1024 - 64 * 1024, cache: Path = CACHE) -> bytes:
    """A PNG just under the service's 20 MB limit (high noise, so it barely compresses)."""
    path = cache / "images" / "largest.png"
    if path.exists():
        return path.read_bytes()
    rng = np.random.default_rng(SEED)
    # About 3 bytes per pixel for strong noise over gradients: aim for the limit, then shrink to fit.
    side = int((limit / 3.0) ** 0.5)
    while True:
        img = photo_like(side * 4 // 3, side, 7)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-40, 40, (side, side * 4 // 3, 3), dtype=np.int16)
        data = encode(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"), "PNG")
        if len(data) <= limit:
            break
        side = int(side * (limit / len(data)) ** 0.5 * 0.99)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def small_jpegs(n: int, seed: int = SEED) -> Iterator[tuple[str, bytes]]:
    """``n`` distinct small JPEGs (320x240) for the throughput backlog, named like an upload."""
    for i in range(n):
        img = photo_like(320, 240, seed + i)
        yield f"backlog/{i:05d}.jpg", encode(img, "JPEG")


def variant(encoded: bytes, n: int) -> bytes:
    """The same picture with different bytes (a numbered comment), so each copy is a new blob to ingest.

    Decoding costs exactly what the original costs; only the sha256 and the file differ.
    """
    note = f"bench variant {n}".encode()
    if encoded[:2] == b"\xff\xd8":  # JPEG: a COM segment right after SOI
        return encoded[:2] + b"\xff\xfe" + struct.pack(">H", len(note) + 2) + note + encoded[2:]
    if encoded[:8] == b"\x89PNG\r\n\x1a\n":  # PNG: a tEXt chunk right after IHDR (8 + 25 bytes)
        body = b"Comment\x00" + note
        chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
        return encoded[:33] + chunk + encoded[33:]
    raise ValueError("only JPEG and PNG variants are made")
