"""A tiny CLIP-like model folder, built with onnx.helper, in the layout shared/clip.py loads.

Same files and interface as the real export (Qdrant/clip-ViT-B-32-vision + Qdrant/clip-ViT-B-32-text):
``vision/model.onnx`` takes ``pixel_values`` [batch, 3, 224, 224] and answers ``image_embeds``
[batch, dim]; ``text/model.onnx`` takes ``input_ids`` (+ ``attention_mask``) [batch, seq] and answers
``text_embeds`` [batch, dim]; beside them ``preprocessor_config.json``, ``tokenizer.json`` (CLIP's
special tokens), ``tokenizer_config.json`` and ``config.json``.

It is small but means something, so tests can check search behaviour rather than just shapes: the
vision model averages the normalised pixels into one colour vector ``v`` and projects it with a
fixed matrix ``W`` whose rows are orthonormal (so cosines between colours survive the projection);
the text model sums the embeddings of the real (unmasked) tokens, and the row of each colour word is
``v(colour) @ W``. "a red square" therefore lands next to a red image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from tests.imagegen import COLOURS

CLIP_MEAN: Final = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: Final = (0.26862954, 0.26130258, 0.27577711)
SIDE: Final = 224
CONTEXT: Final = 77
BOS: Final = "<|startoftext|>"
EOS: Final = "<|endoftext|>"  # also CLIP's pad and unknown token
WORDS: Final = ("!", ",", ".", "a", "an", "the", "of", "photo", "picture", "square", "car", "house", "by", "sea")
OPSET: Final = 17  # ReduceMean still takes its axes as an attribute here
IR_VERSION: Final = 8


def colour_vector(rgb: tuple[int, int, int]) -> np.ndarray:
    """The normalised mean colour the tiny vision model sees for an image of one colour."""
    value: np.ndarray = (np.asarray(rgb, dtype=np.float64) / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    return value


def projection(dim: int, seed: int = 7) -> np.ndarray:
    """A fixed [3, dim] matrix with orthonormal rows."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, 3)))
    return q.T.astype(np.float32)


def vocabulary() -> dict[str, int]:
    """Words first, then CLIP's two special tokens last (as in the real 49,408-token vocabulary)."""
    tokens = [*WORDS, *COLOURS, BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}


def build_tiny_clip(
    folder: Path,
    *,
    dim: int = 64,
    text_dim: int | None = None,
    attention_mask: bool = True,
    static_dim: bool = True,
    config_json: bool = True,
) -> Path:
    """Write the model folder (``vision/`` and ``text/``) under ``folder`` and return ``folder``.

    ``attention_mask=False`` builds a text graph that only takes ``input_ids`` and finds the padding
    itself; ``static_dim=False`` leaves the output width symbolic, so the provider must read it from
    ``config.json`` (written unless ``config_json=False``); ``text_dim`` makes the two towers disagree.
    """
    w = projection(dim)
    (folder / "vision").mkdir(parents=True, exist_ok=True)
    (folder / "text").mkdir(parents=True, exist_ok=True)
    _save(_vision_graph(w, static_dim), folder / "vision" / "model.onnx")
    _write_json(folder / "vision" / "preprocessor_config.json", _preprocessor_config())
    vocab = vocabulary()
    table = _text_table(vocab, projection(text_dim) if text_dim else w)
    _save(_text_graph(table, vocab[EOS], attention_mask, static_dim), folder / "text" / "model.onnx")
    _tokenizer(vocab).save(str(folder / "text" / "tokenizer.json"))
    _write_json(
        folder / "text" / "tokenizer_config.json",
        {"model_max_length": CONTEXT, "pad_token": EOS, "bos_token": BOS, "eos_token": EOS, "unk_token": EOS},
    )
    if config_json:
        _write_json(folder / "vision" / "config.json", {"model_type": "clip_vision_model", "projection_dim": dim})
        _write_json(
            folder / "text" / "config.json",
            {"model_type": "clip_text_model", "projection_dim": text_dim or dim, "max_position_embeddings": CONTEXT},
        )
    return folder


def _vision_graph(w: np.ndarray, static_dim: bool) -> onnx.ModelProto:
    dim = w.shape[1] if static_dim else "embed_dim"
    nodes = [
        helper.make_node("ReduceMean", ["pixel_values"], ["mean_colour"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["mean_colour", "projection"], ["projected"]),
        *_open_width("projected", "image_embeds", static_dim),
        helper.make_node("Unsqueeze", ["image_embeds", "axis_1"], ["last_hidden_state"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_clip_vision",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch_size", 3, SIDE, SIDE])],
        # The hidden state comes first on purpose: the provider must pick the embedding by name.
        [
            helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch_size", 1, dim]),
            helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch_size", dim]),
        ],
        [numpy_helper.from_array(w, "projection"), numpy_helper.from_array(np.array([1], np.int64), "axis_1")],
    )
    return _model(graph)


def _text_graph(table: np.ndarray, pad_id: int, attention_mask: bool, static_dim: bool) -> onnx.ModelProto:
    dim = table.shape[1] if static_dim else "embed_dim"
    seq = ["batch_size", "sequence_length"]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, seq)]
    nodes = [helper.make_node("Gather", ["token_embedding", "input_ids"], ["tokens"], axis=0)]
    constants = [
        numpy_helper.from_array(table, "token_embedding"),
        numpy_helper.from_array(np.array([1], np.int64), "axis_1"),
        numpy_helper.from_array(np.array([2], np.int64), "axis_2"),
    ]
    if attention_mask:
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, seq))
        nodes.append(helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT))
    else:  # no mask input: treat every pad token as padding
        constants.append(numpy_helper.from_array(np.array(pad_id, np.int64), "pad_id"))
        nodes += [
            helper.make_node("Equal", ["input_ids", "pad_id"], ["is_pad"]),
            helper.make_node("Not", ["is_pad"], ["is_token"]),
            helper.make_node("Cast", ["is_token"], ["mask"], to=TensorProto.FLOAT),
        ]
    nodes += [
        helper.make_node("Unsqueeze", ["mask", "axis_2"], ["mask_3d"]),
        helper.make_node("Mul", ["tokens", "mask_3d"], ["last_hidden_state"]),
        helper.make_node("ReduceSum", ["last_hidden_state", "axis_1"], ["pooled"], keepdims=0),
        *_open_width("pooled", "text_embeds", static_dim),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_clip_text",
        inputs,
        [
            helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*seq, dim]),
            helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch_size", dim]),
        ],
        constants,
    )
    return _model(graph)


def _open_width(source: str, target: str, static_dim: bool) -> list[onnx.NodeProto]:
    """``target`` = ``source``; unless static, via Shape + Reshape, which hides the width from ONNX Runtime's
    shape inference (it would otherwise work it out from the weights, whatever the graph declares)."""
    if static_dim:
        return [helper.make_node("Identity", [source], [target])]
    return [
        helper.make_node("Shape", [source], [f"{source}_shape"]),
        helper.make_node("Reshape", [source, f"{source}_shape"], [target]),
    ]


def _text_table(vocab: dict[str, int], w: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(11)
    dim = w.shape[1]

    def noise(norm: float) -> np.ndarray:
        v = np.asarray(rng.normal(size=dim), dtype=np.float64)
        return v * (norm / float(np.linalg.norm(v)))

    table = np.zeros((len(vocab), dim), dtype=np.float32)
    for token, i in vocab.items():
        if token in COLOURS:
            table[i] = colour_vector(COLOURS[token]) @ w
        else:
            # Small next to a colour (|v| is about 2.5), but 70 unmasked pads would swamp it: a
            # provider that ignores the attention mask fails the colour tests.
            table[i] = noise(0.3)
    return table


def _tokenizer(vocab: dict[str, int]) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(vocab, unk_token=EOS))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    tok.add_special_tokens([BOS, EOS])
    return tok


def _preprocessor_config() -> dict[str, object]:
    # The shape of the file the real export ships (CLIPImageProcessor).
    return {
        "crop_size": {"height": SIDE, "width": SIDE},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_processor_type": "CLIPImageProcessor",
        "image_std": list(CLIP_STD),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": SIDE},
    }


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests.tiny_clip")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.save(model, str(path))


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")
