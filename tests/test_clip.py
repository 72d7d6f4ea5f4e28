"""The local CLIP provider, run through its real loading and inference code on a tiny model.

tests/tiny_clip.py builds a model folder in the published layout whose vision tower sees the mean
colour of an image and whose text tower knows colour words, so these tests can check search
behaviour ("red" finds the red image), not only shapes.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shutil
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from shared.clip import ClipProvider, ImageSpec, preprocess_image
from shared.embeddings import EmbeddingProvider, make_provider
from shared.errors import InvalidImage, InvalidInput, PermanentError, ProviderRejected, SettingError
from shared.settings import Settings
from tests.imagegen import COLOURS, image_bytes
from tests.tiny_clip import CLIP_MEAN, CLIP_STD, build_tiny_clip

RED = COLOURS["red"]
BLUE = COLOURS["blue"]


# --- helpers --------------------------------------------------------------------------------------


def clip_settings(model_dir: Path | str | None, **values: str) -> Settings:
    env = {"EMBEDDING_PROVIDER": "clip", **values}
    if model_dir is not None:
        env["CLIP_MODEL_PATH"] = str(model_dir)
    return Settings(env)


def encode(img: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **params)
    return out.getvalue()


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (300, 200), fmt: str = "PNG") -> bytes:
    return encode(Image.new("RGB", size, rgb), fmt)


def seen_colour(pixels: np.ndarray, row: int = 112, col: int = 112) -> np.ndarray:
    """The 0-255 RGB colour the model gets at one pixel, undoing CLIP's normalisation."""
    value = pixels[:, row, col] * np.asarray(CLIP_STD) + np.asarray(CLIP_MEAN)
    return np.asarray(value * 255.0)


def png(width: int, height: int, bit_depth: int, rows: bytes) -> bytes:
    """An RGB PNG written by hand, for what Pillow cannot write (48-bit) or should not (huge)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def png_rgb16(rgb16: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    width, height = size
    return png(width, height, 16, b"".join(b"\x00" + struct.pack(">HHH", *rgb16) * width for _ in range(height)))


def copy_model(model_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    return target


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def provider(model_dir: Path) -> ClipProvider:
    made = make_provider(clip_settings(model_dir))
    assert isinstance(made, ClipProvider)
    return made


@pytest.fixture(scope="module", params=["attention_mask", "input_ids_only"])
def any_variant(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ClipProvider:
    """The provider on both text-graph shapes: with an attention_mask input, and without one."""
    folder = build_tiny_clip(tmp_path_factory.mktemp(request.param), attention_mask=request.param == "attention_mask")
    return ClipProvider(folder)


@pytest.fixture(scope="module")
def colour_images(provider: ClipProvider) -> dict[str, bytes]:
    return {name: image_bytes(name, size=(96, 64)) for name in ("red", "green", "blue", "yellow", "black", "white")}


# --- the provider seam ----------------------------------------------------------------------------


def test_make_provider_builds_it_from_settings_and_reads_the_dimension_from_the_graph(
    provider: ClipProvider, tmp_path: Path
) -> None:
    assert isinstance(provider, EmbeddingProvider)
    assert provider.model_id == "clip:ViT-B-32"
    assert provider.dimension == 64
    wider = make_provider(clip_settings(build_tiny_clip(tmp_path, dim=96), CLIP_MODEL_NAME="ViT-L-14"))
    assert (wider.model_id, wider.dimension) == ("clip:ViT-L-14", 96)
    assert len(wider.embed_image(solid(RED))) == 96


def test_the_dimension_comes_from_config_json_when_the_graph_leaves_it_open(tmp_path: Path) -> None:
    assert ClipProvider(build_tiny_clip(tmp_path / "a", static_dim=False)).dimension == 64
    with pytest.raises(SettingError, match="projection_dim") as info:
        ClipProvider(build_tiny_clip(tmp_path / "b", static_dim=False, config_json=False)).dimension  # noqa: B018
    assert info.value.name == "CLIP_MODEL_PATH"


def test_vectors_are_unit_length_float32_and_repeatable(provider: ClipProvider) -> None:
    for vector, again in [
        (provider.embed_image(solid(RED)), provider.embed_image(solid(RED))),
        (provider.embed_text("a red square"), provider.embed_text("a red square")),
    ]:
        assert vector.dtype == np.float32 and vector.shape == (64,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
        assert np.array_equal(vector, again)


def test_batches_give_the_same_vectors_as_single_calls(model_dir: Path) -> None:
    small_batches = ClipProvider(model_dir, batch_size=2)  # 5 inputs: batches of 2, 2 and 1
    images = [image_bytes(c, seed=i) for i, c in enumerate(["red", "green", "blue", "yellow", "white"])]
    texts = ["red", "a green square", "the blue sea", "yellow", "a photo of a white house"]
    for batch, singles in [
        (small_batches.embed_images(images), [small_batches.embed_image(b) for b in images]),
        (small_batches.embed_texts(texts), [small_batches.embed_text(t) for t in texts]),
    ]:
        assert len(batch) == 5
        for a, b in zip(batch, singles, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert small_batches.embed_images([]) == [] and small_batches.embed_texts([]) == []


@pytest.mark.parametrize(
    ("query", "colour"),
    [("red", "red"), ("a green square", "green"), ("A photo of a BLUE car", "blue"), ("yellow", "yellow")],
)
def test_a_colour_word_finds_the_image_of_that_colour(any_variant: ClipProvider, query: str, colour: str) -> None:
    images = {name: any_variant.embed_image(image_bytes(name)) for name in ("red", "green", "blue", "yellow")}
    text = any_variant.embed_text(query)
    scores = {name: float(text @ vector) for name, vector in images.items()}
    assert max(scores, key=lambda name: scores[name]) == colour
    assert scores[colour] > 0.9


def test_similar_images_are_close_and_different_ones_are_not(provider: ClipProvider) -> None:
    red, dark_red, blue = (provider.embed_image(solid(c)) for c in (RED, (180, 10, 20), BLUE))
    assert float(red @ dark_red) > 0.95
    assert float(red @ blue) < 0.5


# --- image preprocessing --------------------------------------------------------------------------


def test_preprocessing_is_clips_resize_crop_and_normalise(provider: ClipProvider) -> None:
    pixels = preprocess_image(solid(RED, (300, 200)), provider.image_spec)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
    expected = (np.asarray(RED) / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    np.testing.assert_allclose(pixels, np.broadcast_to(expected[:, None, None], pixels.shape), atol=1e-5)


def test_the_shortest_side_is_resized_and_the_center_kept(provider: ClipProvider) -> None:
    img = Image.new("RGB", (300, 100), BLUE)
    img.paste(RED, (100, 0, 200, 100))  # the middle third: exactly what the 224 x 224 center crop keeps
    data = encode(img)
    pixels = preprocess_image(data, provider.image_spec)
    for col in (8, 112, 215):
        np.testing.assert_allclose(seen_colour(pixels, col=col), RED, atol=1.0)
    assert float(provider.embed_text("red") @ provider.embed_image(data)) > 0.9


def test_exif_orientation_is_applied(provider: ClipProvider) -> None:
    stored = Image.new("RGB", (200, 100), BLUE)
    stored.paste(RED, (0, 0, 100, 100))  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the left half is shown on top
    pixels = preprocess_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()), provider.image_spec)
    np.testing.assert_allclose(seen_colour(pixels, row=30), RED, atol=12)
    np.testing.assert_allclose(seen_colour(pixels, row=190), BLUE, atol=12)


def _palette_with_transparency() -> bytes:
    img = Image.new("P", (40, 30), 1)
    img.putpalette([220, 20, 30, 0, 0, 0] + [0, 0, 0] * 254)
    return encode(img, "GIF", transparency=1)


def _palette() -> bytes:
    img = Image.new("P", (40, 30), 0)
    img.putpalette([220, 20, 30] + [0, 0, 0] * 255)
    return encode(img)


MODES: dict[str, tuple[Callable[[], bytes], tuple[int, int, int], float]] = {
    # name: (bytes, the colour the model must see, tolerance in 0-255 units)
    "RGB JPEG": (lambda: solid(RED, fmt="JPEG"), RED, 6),
    "L": (lambda: encode(Image.new("L", (40, 30), 100)), (100, 100, 100), 1),
    "1-bit": (lambda: encode(Image.new("1", (40, 30), 1)), (255, 255, 255), 1),
    "RGBA half transparent": (lambda: encode(Image.new("RGBA", (40, 30), (255, 0, 0, 128))), (255, 127, 127), 2),
    "RGBA fully transparent black": (lambda: encode(Image.new("RGBA", (40, 30), (0, 0, 0, 0))), (255, 255, 255), 1),
    "LA": (lambda: encode(Image.new("LA", (40, 30), (100, 255))), (100, 100, 100), 1),
    "palette": (_palette, RED, 1),
    "palette with transparency (GIF)": (_palette_with_transparency, (255, 255, 255), 1),
    "CMYK JPEG": (lambda: encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95), (255, 0, 0), 8),
    "16-bit grey PNG": (lambda: encode(Image.new("I;16", (40, 30), 128 * 257)), (128, 128, 128), 1),
    "48-bit RGB PNG": (lambda: png_rgb16((220 * 257, 20 * 257, 30 * 257)), RED, 1),
    "32-bit float TIFF": (lambda: encode(Image.new("F", (40, 30), 0.5), "TIFF"), (128, 128, 128), 1),
    "WEBP lossless": (lambda: encode(Image.new("RGB", (40, 30), RED), "WEBP", lossless=True), RED, 1),
    "BMP": (lambda: solid(RED, fmt="BMP"), RED, 1),
    "TIFF": (lambda: solid(RED, fmt="TIFF"), RED, 1),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_colour_mode_becomes_the_rgb_a_viewer_shows(provider: ClipProvider, mode: str) -> None:
    make, expected, tolerance = MODES[mode]
    data = make()
    np.testing.assert_allclose(seen_colour(preprocess_image(data, provider.image_spec)), expected, atol=tolerance)
    assert np.linalg.norm(provider.embed_image(data)) == pytest.approx(1.0, abs=1e-5)


def test_a_missing_preprocessor_config_means_clips_own_values(model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(model_dir, tmp_path)
    (folder / "vision" / "preprocessor_config.json").unlink()
    without = ClipProvider(folder)
    assert without.image_spec == ImageSpec()
    np.testing.assert_allclose(without.embed_image(solid(RED)), ClipProvider(model_dir).embed_image(solid(RED)))


@pytest.mark.parametrize(
    "config",
    [{"size": {"height": 224, "width": 224}}, {"crop_size": 256}, {"image_std": [1, 0, 1]}, {"resample": 9}],
)
def test_an_unusable_preprocessor_config_is_reported(model_dir: Path, tmp_path: Path, config: dict[str, Any]) -> None:
    folder = copy_model(model_dir, tmp_path)
    (folder / "vision" / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(SettingError, match=r"preprocessor_config\.json is not usable") as info:
        ClipProvider(folder)
    assert info.value.name == "CLIP_MODEL_PATH"


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"this is not an image",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,  # a PNG signature and a broken header
        image_bytes("red")[:300],  # a JPEG cut inside its header
        image_bytes("red", size=(400, 300), seed=500)[:-400],  # a JPEG cut inside its pixel data
    ],
    ids=["text", "broken PNG header", "JPEG cut in its header", "JPEG cut in its pixels"],
)
def test_bytes_that_are_not_an_image_are_rejected_for_good(provider: ClipProvider, data: bytes) -> None:
    with pytest.raises(ProviderRejected, match="could not be decoded") as info:
        provider.embed_image(data)
    assert info.value.code == "InvalidImageFormat"
    assert isinstance(info.value, PermanentError)


def test_an_empty_image_is_invalid(provider: ClipProvider) -> None:
    with pytest.raises(InvalidImage, match="empty"):
        provider.embed_image(b"")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("size", [(12_000, 8_000), (20_000, 20_000)])  # above Pillow's warning / error limit
def test_decompression_bombs_are_rejected_before_decoding(provider: ClipProvider, size: tuple[int, int]) -> None:
    with pytest.raises(ProviderRejected, match="decompression bomb") as info:
        provider.embed_image(png(*size, 8, b""))  # the header claims the size; no pixels follow
    assert info.value.code == "DecompressionBomb"


def test_a_bad_image_in_a_batch_is_named_by_position(provider: ClipProvider) -> None:
    with pytest.raises(ProviderRejected, match=r"^image 2 of 3: the image could not be decoded"):
        provider.embed_images([solid(RED), b"junk", solid(BLUE)])


@pytest.mark.parametrize("text", ["", "   ", " ".join(["red"] * 71)])
def test_text_must_have_1_to_70_words_as_with_azure(provider: ClipProvider, text: str) -> None:
    with pytest.raises(InvalidInput, match="1 to 70 words") as info:
        provider.embed_text(text)
    assert info.value.code == "InvalidText"


def test_long_texts_are_truncated_to_the_context_and_keep_their_meaning(provider: ClipProvider) -> None:
    long_text = ", ".join(["red"] * 70)  # 70 words, 139 tokens: more than the 77-token context
    vector = provider.embed_text(long_text)
    assert float(vector @ provider.embed_image(solid(RED))) > 0.9
    tokenizer = provider._text_model().tokenizer
    assert [len(e.ids) for e in tokenizer.encode_batch(["red", long_text])] == [77, 77]
    assert tokenizer.encode(long_text).tokens[-1] == "<|endoftext|>"


# --- model folder and packages --------------------------------------------------------------------


def test_no_model_path_says_which_setting_and_how_to_get_the_model() -> None:
    with pytest.raises(SettingError, match=r"docs/local-provider\.md") as info:
        make_provider(clip_settings(None))
    assert info.value.name == "CLIP_MODEL_PATH"


def test_a_missing_folder_names_clip_model_path_and_the_download_command(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="does not exist") as info:
        make_provider(clip_settings(tmp_path / "nowhere"))
    assert info.value.name == "CLIP_MODEL_PATH"
    assert "setting CLIP_MODEL_PATH" in info.value.message
    assert "hf download Qdrant/clip-ViT-B-32-$part" in info.value.message


@pytest.mark.parametrize("missing", ["text/tokenizer.json", "text/model.onnx", "vision/model.onnx"])
def test_a_missing_model_file_is_named(model_dir: Path, tmp_path: Path, missing: str) -> None:
    folder = copy_model(model_dir, tmp_path)
    (folder / missing).unlink()
    with pytest.raises(SettingError, match=f"lacks {re.escape(missing)}") as info:
        make_provider(clip_settings(folder))
    assert info.value.name == "CLIP_MODEL_PATH"


def test_a_git_lfs_pointer_instead_of_the_model_is_recognised(model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(model_dir, tmp_path)
    (folder / "vision" / "model.onnx").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 351564868\n"
    )
    with pytest.raises(SettingError, match="Git LFS pointer"):
        ClipProvider(folder)


def test_a_corrupt_model_or_tokenizer_is_reported_on_first_use(model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(model_dir, tmp_path)
    (folder / "vision" / "model.onnx").write_bytes(b"\x08\x07 not a model " * 50)
    (folder / "text" / "tokenizer.json").write_text("{ not json")
    broken = ClipProvider(folder)  # sessions are created lazily
    with pytest.raises(SettingError, match=r"vision/model\.onnx cannot be loaded by ONNX Runtime"):
        broken.embed_image(solid(RED))
    with pytest.raises(SettingError, match=r"text/tokenizer\.json cannot be read"):
        broken.embed_text("red")


def test_towers_of_different_models_are_refused(tmp_path: Path) -> None:
    mixed = ClipProvider(build_tiny_clip(tmp_path, dim=64, text_dim=32))
    with pytest.raises(SettingError, match="32 dimensions but the vision model's have 64"):
        mixed.load()


def test_missing_packages_say_what_to_install(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(
        SettingError, match=r"needs the Python package onnxruntime: pip install -r requirements-clip.txt"
    ):
        make_provider(clip_settings(model_dir))


def test_settings_are_validated_by_name(model_dir: Path) -> None:
    assert clip_settings(model_dir, EMBEDDING_PROVIDER="CLIP").embedding_provider == "clip"
    assert clip_settings(model_dir).clip_threads == 0
    assert ClipProvider.from_settings(clip_settings(model_dir, CLIP_THREADS="2")).threads == 2
    for name, value in [("CLIP_MODEL_NAME", "ViT B 32"), ("CLIP_THREADS", "many"), ("CLIP_THREADS", "-1")]:
        with pytest.raises(SettingError) as info:
            make_provider(clip_settings(model_dir, **{name: value}))
        assert info.value.name == name


# --- concurrency ----------------------------------------------------------------------------------


def test_concurrent_first_calls_create_each_session_once(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[str] = []

    class CountingSession(onnxruntime.InferenceSession):  # type: ignore[misc]
        def __init__(self, path: str, *args: Any, **kwargs: Any) -> None:
            created.append(Path(path).parent.name)
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", CountingSession)
    fresh = ClipProvider(model_dir)
    barrier = threading.Barrier(8)
    results: list[tuple[np.ndarray, np.ndarray]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            results.append((fresh.embed_image(solid(RED)), fresh.embed_text("red")))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert sorted(created) == ["text", "vision"]
    assert len(results) == 8
    for image, text in results:
        np.testing.assert_array_equal(image, results[0][0])
        np.testing.assert_array_equal(text, results[0][1])
