"""Local CLIP embeddings on the CPU with ONNX Runtime: the ``EmbeddingProvider`` that needs no Azure.

Images and text share one space (CLIP ViT-B/32: 512 dimensions), computed on this machine: no Azure
resource, no per-call cost, and a model a collection can move to before the Azure AI Vision
embeddings API retires.

The model is a folder (``CLIP_MODEL_PATH``) in the layout fastembed publishes on the Hugging Face Hub
(``Qdrant/clip-ViT-B-32-vision`` and ``Qdrant/clip-ViT-B-32-text``), one sub-folder per tower::

    vision/model.onnx                 pixel_values [batch, 3, 224, 224] -> image_embeds [batch, dim]
    vision/preprocessor_config.json   resize, crop, mean, std (CLIP's values when absent)
    text/model.onnx                   input_ids (+ attention_mask) [batch, 77] -> text_embeds [batch, dim]
    text/tokenizer.json               CLIP's BPE tokenizer (tokenizer_config.json and config.json optional)

docs/local-provider.md says how to download it. onnxruntime and tokenizers come from
requirements-clip.txt and are imported on first use, so the Azure deployment does not carry them.
Each ONNX session is created once, on first use, and shared: ``InferenceSession.run`` is thread-safe.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from .embeddings import Vector
from .errors import InvalidImage, InvalidInput, ProviderMisconfigured, ProviderRejected, SettingError
from .settings import Settings

if TYPE_CHECKING:
    from tokenizers import Tokenizer

DEFAULT_MODEL_NAME: Final = "ViT-B-32"
DEFAULT_BATCH_SIZE: Final = 16
DEFAULT_CONTEXT_LENGTH: Final = 77
# The same rule as Azure AI Vision, so whether a query is accepted never depends on the provider.
MAX_TEXT_WORDS: Final = 70
CLIP_MEAN: Final = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: Final = (0.26862954, 0.26130258, 0.27577711)
# Pillow's own decompression-bomb threshold: beyond it decoding would take gigabytes.
MAX_PIXELS: Final = Image.MAX_IMAGE_PIXELS or 89_478_485
REQUIRED_PACKAGES: Final = ("onnxruntime", "tokenizers")

VISION_MODEL: Final = "vision/model.onnx"
PREPROCESSOR_CONFIG: Final = "vision/preprocessor_config.json"
VISION_CONFIG: Final = "vision/config.json"
TEXT_MODEL: Final = "text/model.onnx"
TOKENIZER: Final = "text/tokenizer.json"
TOKENIZER_CONFIG: Final = "text/tokenizer_config.json"
TEXT_CONFIG: Final = "text/config.json"

DOWNLOAD_HINT: Final = (
    "download CLIP ViT-B/32 with `for part in vision text; do hf download Qdrant/clip-ViT-B-32-$part "
    "--local-dir models/clip-ViT-B-32/$part; done` and set CLIP_MODEL_PATH=models/clip-ViT-B-32 "
    "(see docs/local-provider.md)"
)
_LAYOUT: Final = f"it must hold {VISION_MODEL}, {TEXT_MODEL} and {TOKENIZER}"
_TEXT_INPUTS: Final = frozenset({"input_ids", "attention_mask", "position_ids"})
_NUMPY_TYPES: Final[Mapping[str, type[np.generic]]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}
_EOS: Final = "<|endoftext|>"  # CLIP pads with its end-of-text token
_EXIF_ORIENTATION: Final = 0x0112


@dataclass(frozen=True)
class ImageSpec:
    """CLIP's image preprocessing: resize the shortest side, center-crop, rescale, normalise."""

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    rescale: float = 1 / 255
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: Image.Resampling = Image.Resampling.BICUBIC

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ImageSpec:
        """Read a Hugging Face ``preprocessor_config.json`` (CLIPImageProcessor); raises ValueError."""
        size = config.get("size", 224)
        edge = _positive(size.get("shortest_edge") if isinstance(size, Mapping) else size)
        if edge is None:
            raise ValueError(f"size must be a number of pixels or {{'shortest_edge': n}}, not {size!r}")
        crop = config.get("crop_size", edge)
        height = _positive(crop.get("height") if isinstance(crop, Mapping) else crop)
        width = _positive(crop.get("width") if isinstance(crop, Mapping) else crop)
        if height is None or width is None or height > edge or width > edge:
            raise ValueError(f"crop_size {crop!r} must be positive and no larger than the resized side {edge}")
        mean = _triple(config.get("image_mean", CLIP_MEAN), "image_mean")
        std = _triple(config.get("image_std", CLIP_STD), "image_std")
        if min(std) <= 0:
            raise ValueError(f"image_std {std} must be positive")
        if not config.get("do_normalize", True):
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        rescale = config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0
        if not isinstance(rescale, int | float) or isinstance(rescale, bool) or rescale <= 0:
            raise ValueError(f"rescale_factor must be a positive number, not {rescale!r}")
        resample = config.get("resample", Image.Resampling.BICUBIC.value)
        if resample not in {r.value for r in Image.Resampling}:
            raise ValueError(f"resample {resample!r} is not a Pillow resampling filter (0-5)")
        return cls(edge, height, width, float(rescale), mean, std, Image.Resampling(resample))


def preprocess_image(data: bytes, spec: ImageSpec) -> npt.NDArray[np.float32]:
    """Decode image bytes into CLIP's input, float32 [3, crop_height, crop_width] (channels first).

    EXIF orientation is applied and every colour mode becomes RGB first. Raises
    :class:`InvalidImage` for empty bytes and :class:`ProviderRejected` for bytes that are not a
    decodable image.
    """
    if not data:
        raise InvalidImage("the image is empty (0 bytes)")
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ProviderRejected(
            "the image could not be decoded: the bytes are in no image format Pillow reads", code="InvalidImageFormat"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ProviderRejected(f"the image is a decompression bomb ({exc})", code="DecompressionBomb") from None
    except Exception as exc:  # Pillow raises many types for corrupt headers
        raise _undecodable(exc) from None
    if img.width * img.height > MAX_PIXELS:
        raise ProviderRejected(
            f"the image is {img.width}x{img.height} pixels, more than {MAX_PIXELS:,}: a decompression bomb",
            code="DecompressionBomb",
        )
    try:
        # JPEG only: decode at 1/2, 1/4 or 1/8 scale while staying above twice the target size. A
        # 24-megapixel photo then decodes in a fraction of the time and memory, and the bicubic
        # resize below still has at least two source pixels per output pixel.
        img.draft(None, (2 * spec.shortest_edge, 2 * spec.shortest_edge))
        img.load()
        img = _to_rgb(_upright(img))
    except Exception as exc:  # truncated or corrupt pixel data
        raise _undecodable(exc) from None

    width, height = img.size
    edge = spec.shortest_edge
    size = (
        (edge, max(edge, int(edge * height / width)))
        if width <= height
        else (max(edge, int(edge * width / height)), edge)
    )
    img = img.resize(size, resample=spec.resample)
    left, top = (size[0] - spec.crop_width) // 2, (size[1] - spec.crop_height) // 2
    img = img.crop((left, top, left + spec.crop_width, top + spec.crop_height))
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    pixels: npt.NDArray[np.float32] = (np.asarray(img, dtype=np.float32) * np.float32(spec.rescale) - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)


@dataclass(frozen=True)
class ModelFiles:
    """Where the model's files are; :meth:`locate` checks that the required ones exist."""

    root: Path

    def __getitem__(self, relative: str) -> Path:
        return self.root / relative

    @classmethod
    def locate(cls, root: Path) -> ModelFiles:
        """The model folder at ``root``; raises :class:`SettingError` naming CLIP_MODEL_PATH if unusable."""
        if not root.is_dir():
            problem = "does not exist" if not root.exists() else "is not a folder"
            raise SettingError("CLIP_MODEL_PATH", f"is {str(root)!r}, which {problem}: {DOWNLOAD_HINT}")
        files = cls(root)
        missing = [name for name in (VISION_MODEL, TEXT_MODEL, TOKENIZER) if not files[name].is_file()]
        if missing:
            raise SettingError(
                "CLIP_MODEL_PATH", f"is {str(root)!r}, which lacks {', '.join(missing)}; {_LAYOUT}: {DOWNLOAD_HINT}"
            )
        for name in (VISION_MODEL, TEXT_MODEL):
            with files[name].open("rb") as f:
                head = f.read(200)
            if head.startswith(b"version https://git-lfs"):
                raise SettingError(
                    "CLIP_MODEL_PATH",
                    f"is {str(root)!r}, whose {name} is a Git LFS pointer, not the model: fetch the real file "
                    "(`git lfs pull`, or download it with `hf download`)",
                )
        return files

    def json(self, relative: str) -> dict[str, Any]:
        """A JSON file of the model as a dict; ``{}`` when the (optional) file is absent."""
        path = self[relative]
        if not path.is_file():
            return {}
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _model_error(self, f"{relative} cannot be read as JSON ({exc})") from None
        if not isinstance(value, dict):
            raise _model_error(self, f"{relative} is not a JSON object")
        return value


@dataclass(frozen=True)
class _Tower:
    """One ONNX session and the output that holds its embeddings."""

    session: Any  # onnxruntime.InferenceSession (untyped package)
    name: str  # the model file, for messages
    output: str
    dimension: int

    def run(self, feeds: Mapping[str, npt.NDArray[Any]], count: int) -> list[Vector]:
        try:
            (raw,) = self.session.run([self.output], dict(feeds))
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise ProviderMisconfigured(
                f"ONNX Runtime could not run {self.name} ({type(exc).__name__}: {_clip(str(exc))}); "
                "check CLIP_MODEL_PATH"
            ) from exc
        matrix = np.asarray(raw, dtype=np.float32).reshape(count, -1)
        if matrix.shape[1] != self.dimension:
            raise ProviderMisconfigured(
                f"{self.name} answered vectors of {matrix.shape[1]} numbers, expected {self.dimension}"
            )
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        if not (np.isfinite(matrix).all() and (norms > 0).all()):
            raise ProviderRejected(f"{self.name} produced a zero or non-finite vector for this input")
        return list((matrix / norms).astype(np.float32))


@dataclass(frozen=True)
class _Vision:
    tower: _Tower
    input: str
    dtype: type[np.generic]


@dataclass(frozen=True)
class _Text:
    tower: _Tower
    tokenizer: Tokenizer
    context_length: int
    inputs: Mapping[str, type[np.generic]]


class ClipProvider:
    """Embeds images and text with a CLIP model run locally by ONNX Runtime; vectors are L2-normalised."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        model_name: str = DEFAULT_MODEL_NAME,
        threads: int = 0,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        missing = [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            raise _missing_packages(missing)
        self.model_name = model_name
        self.files = ModelFiles.locate(Path(model_path).expanduser())
        try:
            self.image_spec = ImageSpec.from_config(self.files.json(PREPROCESSOR_CONFIG))
        except ValueError as exc:
            raise _model_error(self.files, f"{PREPROCESSOR_CONFIG} is not usable: {exc}") from None
        self.threads = threads
        self.batch_size = max(1, batch_size)
        # Reentrant: loading the text tower compares its width with the vision tower's.
        self._lock = threading.RLock()
        self._vision: _Vision | None = None
        self._text: _Text | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ClipProvider:
        """The provider that ``CLIP_MODEL_PATH``, ``CLIP_MODEL_NAME`` and ``CLIP_THREADS`` describe."""
        return cls(settings.clip_model_path, model_name=settings.clip_model_name, threads=settings.clip_threads)

    # --- EmbeddingProvider ---------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return f"clip:{self.model_name}"

    @property
    def dimension(self) -> int:
        """The width of the vision model's embedding output (loads the vision model)."""
        return self._vision_model().tower.dimension

    def embed_image(self, data: bytes) -> Vector:
        """Embed encoded image bytes (anything Pillow decodes)."""
        return self.embed_images([data])[0]

    def embed_text(self, text: str) -> Vector:
        """Embed a text query of 1 to 70 words into the images' space."""
        return self.embed_texts([text])[0]

    # --- batches -------------------------------------------------------------------------------
    def embed_images(self, images: Sequence[bytes]) -> list[Vector]:
        """Embed many images, ``batch_size`` per model run; an undecodable one fails the call, named by position."""
        vision = self._vision_model()
        vectors: list[Vector] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            pixels = np.stack([self._pixels(data, start + i, len(images)) for i, data in enumerate(chunk)])
            vectors += vision.tower.run({vision.input: pixels.astype(vision.dtype)}, len(chunk))
        return vectors

    def embed_texts(self, texts: Sequence[str]) -> list[Vector]:
        """Embed many texts, ``batch_size`` per model run; each must have 1 to 70 words."""
        for i, text in enumerate(texts):
            words = len(text.split())
            if not 1 <= words <= MAX_TEXT_WORDS:
                where = f"text {i + 1} of {len(texts)}: " if len(texts) > 1 else ""
                raise InvalidInput(
                    f"{where}the text has {words} words; queries take 1 to {MAX_TEXT_WORDS} words", code="InvalidText"
                )
        text_model = self._text_model()
        vectors: list[Vector] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            encodings = text_model.tokenizer.encode_batch(chunk)
            values = {
                "input_ids": [e.ids for e in encodings],
                "attention_mask": [e.attention_mask for e in encodings],
                "position_ids": [list(range(text_model.context_length))] * len(chunk),
            }
            feeds = {name: np.asarray(values[name], dtype=dtype) for name, dtype in text_model.inputs.items()}
            vectors += text_model.tower.run(feeds, len(chunk))
        return vectors

    def load(self) -> None:
        """Load both models now rather than on first use (e.g. to fail fast at start-up)."""
        self._vision_model()
        self._text_model()

    # --- loading -------------------------------------------------------------------------------
    def _pixels(self, data: bytes, index: int, count: int) -> npt.NDArray[np.float32]:
        try:
            return preprocess_image(data, self.image_spec)
        except (InvalidImage, ProviderRejected) as exc:
            if count == 1:
                raise
            raise type(exc)(f"image {index + 1} of {count}: {exc.message}", code=exc.code) from None

    def _vision_model(self) -> _Vision:
        if self._vision is None:
            with self._lock:
                if self._vision is None:
                    self._vision = self._load_vision()
        return self._vision

    def _text_model(self) -> _Text:
        if self._text is None:
            with self._lock:
                if self._text is None:
                    self._text = self._load_text()
        return self._text

    def _load_vision(self) -> _Vision:
        session = self._session(VISION_MODEL)
        inputs = session.get_inputs()
        spec = self.image_spec
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise _model_error(self.files, f"{VISION_MODEL} takes {names}; expected one image input (pixel_values)")
        shape, dtype = list(inputs[0].shape), _NUMPY_TYPES.get(inputs[0].type)
        expected = [None, 3, spec.crop_height, spec.crop_width]
        if (
            dtype not in (np.float32, np.float16)
            or len(shape) != 4
            or any(
                isinstance(got, int) and want is not None and got != want
                for got, want in zip(shape, expected, strict=True)
            )
        ):
            raise _model_error(
                self.files,
                f"{VISION_MODEL} takes {inputs[0].name} of {inputs[0].type} {shape}; expected float "
                f"[batch, 3, {spec.crop_height}, {spec.crop_width}] to match {PREPROCESSOR_CONFIG}",
            )
        tower = self._tower(session, VISION_MODEL, "image_embeds", VISION_CONFIG)
        return _Vision(tower, inputs[0].name, dtype)

    def _load_text(self) -> _Text:
        tokenizers = _require("tokenizers")
        session = self._session(TEXT_MODEL)
        declared = {i.name: i for i in session.get_inputs()}
        inputs = {name: _NUMPY_TYPES.get(i.type) for name, i in declared.items()}
        if "input_ids" not in inputs or not set(inputs) <= _TEXT_INPUTS or None in inputs.values():
            listed = ", ".join(f"{i.name} ({i.type})" for i in declared.values())
            raise _model_error(
                self.files,
                f"{TEXT_MODEL} takes {listed}; expected input_ids and optionally attention_mask, position_ids",
            )
        config = self.files.json(TOKENIZER_CONFIG)
        length = _positive(declared["input_ids"].shape[-1] if declared["input_ids"].shape else None)
        if length is None:
            # Transformers writes a huge model_max_length when it does not know one: only trust sane values.
            given = _positive(config.get("model_max_length"))
            length = given if given is not None and given <= 4096 else DEFAULT_CONTEXT_LENGTH
        try:
            tokenizer: Tokenizer = tokenizers.Tokenizer.from_file(str(self.files[TOKENIZER]))
        except Exception as exc:  # the Rust side raises a bare Exception for bad files
            raise _model_error(self.files, f"{TOKENIZER} cannot be read by tokenizers ({_clip(str(exc))})") from None
        pad_token = _pad_token(tokenizer, config)
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise _model_error(self.files, f"{TOKENIZER} has no id for its pad token {pad_token!r}")
        # Every text becomes exactly context_length ids: start, tokens, end, padding. Truncation keeps
        # the end token, which CLIP's text tower pools from.
        tokenizer.enable_truncation(max_length=length)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, length=length)
        tower = self._tower(session, TEXT_MODEL, "text_embeds", TEXT_CONFIG)
        width = self._vision_model().tower.dimension
        if tower.dimension != width:
            raise _model_error(
                self.files,
                f"the text model's vectors have {tower.dimension} dimensions but the vision model's have "
                f"{width}: the two halves belong to different models",
            )
        return _Text(tower, tokenizer, length, {n: t for n, t in inputs.items() if t is not None})

    def _session(self, relative: str) -> Any:
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = 3  # errors only; warnings about the graph are not the user's business
        try:
            return ort.InferenceSession(
                str(self.files[relative]), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped exceptions
            raise _model_error(
                self.files,
                f"{relative} cannot be loaded by ONNX Runtime ({type(exc).__name__}: {_clip(str(exc))}); "
                f"download it again: {DOWNLOAD_HINT}",
            ) from None

    def _tower(self, session: Any, relative: str, preferred: str, config: str) -> _Tower:
        outputs = session.get_outputs()
        # By name first: exports also answer the hidden states, whose first axis is the batch too.
        chosen = next((o for o in outputs if o.name == preferred), None)
        chosen = chosen or next((o for o in outputs if len(o.shape or ()) == 2), None)
        if chosen is None:
            names = ", ".join(f"{o.name} {o.shape}" for o in outputs)
            raise _model_error(self.files, f"{relative} answers {names}; expected {preferred} [batch, dimension]")
        width = _positive(chosen.shape[-1] if chosen.shape else None)
        if width is None:
            width = _positive(self.files.json(config).get("projection_dim"))
        if width is None:
            raise _model_error(
                self.files,
                f"the width of {relative}'s output {chosen.name} is not fixed in the graph and {config} gives no "
                "projection_dim",
            )
        return _Tower(session, relative, chosen.name, width)


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise _missing_packages([module]) from None


def _missing_packages(names: Sequence[str]) -> SettingError:
    return SettingError(
        "EMBEDDING_PROVIDER",
        f"is 'clip', which needs the Python package{'s' if len(names) > 1 else ''} {' and '.join(names)}: "
        "pip install -r requirements-clip.txt",
    )


def _model_error(files: ModelFiles, problem: str) -> SettingError:
    return SettingError("CLIP_MODEL_PATH", f"is {str(files.root)!r}, but {problem}")


def _pad_token(tokenizer: Tokenizer, config: Mapping[str, Any]) -> str:
    """The pad token as tokenizer.json, then tokenizer_config.json name it; CLIP's end token otherwise."""
    for candidate in ((tokenizer.padding or {}).get("pad_token"), config.get("pad_token")):
        if isinstance(candidate, Mapping):  # {"content": "<|endoftext|>", "__type": "AddedToken", ...}
            candidate = candidate.get("content")
        if isinstance(candidate, str) and candidate:
            return candidate
    return _EOS


def _undecodable(exc: Exception) -> ProviderRejected:
    return ProviderRejected(
        f"the image could not be decoded ({type(exc).__name__}: {_clip(str(exc))})", code="InvalidImageFormat"
    )


def _upright(img: Image.Image) -> Image.Image:
    """The image as a viewer shows it: EXIF orientation applied; an unreadable EXIF block is ignored."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block spoils the metadata, not the picture
        return img
    return ImageOps.exif_transpose(img) if orientation != 1 else img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB; transparent areas become white, as a viewer shows them on a page."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        # Fully transparent pixels often hold black or garbage that nobody ever sees.
        rgba = img.convert("RGBA")
        img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img.alpha_composite(rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale as 8-bit: Pillow's own conversion clips them to white."""
    values = np.nan_to_num(np.asarray(img, dtype=np.float64))
    if img.mode == "F":
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    elif img.mode.startswith("I;16") or (values.size and values.max() > 255):
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    return Image.fromarray(np.clip(values * scale, 0, 255).round().astype(np.uint8))


def _positive(value: object) -> int | None:
    """``value`` if it is a positive whole number (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _triple(value: object, name: str) -> tuple[float, float, float]:
    if not (
        isinstance(value, list | tuple)
        and len(value) == 3
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
    ):
        raise ValueError(f"{name} must be three numbers (R, G, B), not {value!r}")
    return float(value[0]), float(value[1]), float(value[2])


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
