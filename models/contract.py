"""The tensor contract between the gateway, Triton and the compiled parts of each model.

One place names every tensor that crosses a process boundary: its name, its Triton data type
and its shape without the batch dimension (``-1`` = dynamic). Everything that builds or reads
those tensors takes them from here: the gateway's Triton client (service/backends/triton.py),
the Triton python model (models/triton_python.py), the ONNX exporter (models/export.py) and the
repository writer (models/triton_repo.py).

Two serving variants:

- ``python``: Triton's python backend runs the model's own torch forward. The gateway sends
  ``FRAMES`` uint8 [T,H,W,3], ``NUM_FRAMES`` int32 [1] and ``PROMPT`` bytes [1]; it gets
  ``SCORES`` fp32 [K].
- ``tensorrt``: compiled engines, which hold no strings. The gateway sends ``FRAMES`` and
  ``NUM_FRAMES`` and, for a model that reads a prompt, the prompt already tokenised:
  ``INPUT_IDS`` int64 [L] and ``ATTENTION_MASK`` int64 [L] (right-padded to the batch's longest).

A compiled model is made of parts (one ONNX graph / TensorRT plan each, listed by ``parts``);
their tensors are below too, so the exporter and the repository agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.spec import ModelSpec

Variant = Literal["python", "tensorrt"]
VARIANTS: tuple[Variant, ...] = ("python", "tensorrt")

# Gateway <-> Triton
FRAMES = "FRAMES"
NUM_FRAMES = "NUM_FRAMES"
PROMPT = "PROMPT"
INPUT_IDS = "INPUT_IDS"
ATTENTION_MASK = "ATTENTION_MASK"
SCORES = "SCORES"
# Between the parts of a compiled model
PIXELS = "PIXELS"  # CLIP image tower input, float32 [S,3,224,224]: the S segment frames, normalised crops
IMAGE_EMBEDS = "IMAGE_EMBEDS"  # CLIP image tower output, float32 [S,D], L2-normalised
TEXT_EMBEDS = "TEXT_EMBEDS"  # CLIP text tower output, float32 [D], L2-normalised
PATCHES = "PATCHES"  # Qwen2-VL vision tower input, float32 [G, h*w, 3*2*14*14] (one row per 2-frame group)
POSITIONS = "POSITIONS"  # Qwen2-VL vision tower input, int64 [h*w, 2]: (row, col) of each patch
VIDEO_EMBEDS = "VIDEO_EMBEDS"  # Qwen2-VL vision tower output, float32 [G, h*w/4, hidden]

# Triton data type name -> numpy dtype
NUMPY = {"UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "BYTES": np.object_}


@dataclass(frozen=True)
class Tensor:
    """One named tensor: Triton data type name (``UINT8``, ``INT32``, ``INT64``, ``FP32``, ``BYTES``)
    and dims without the batch dimension."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    @property
    def config_type(self) -> str:
        """The ``data_type`` of config.pbtxt (``TYPE_STRING`` for bytes)."""
        return "TYPE_STRING" if self.dtype == "BYTES" else f"TYPE_{self.dtype}"

    @property
    def numpy(self):
        return NUMPY[self.dtype]


@dataclass(frozen=True)
class Contract:
    """Inputs and outputs of one Triton model (batch dimension first on every tensor)."""

    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)


def _frames() -> tuple[Tensor, Tensor]:
    return Tensor(FRAMES, "UINT8", (-1, -1, -1, 3)), Tensor(NUM_FRAMES, "INT32", (1,))


def scores(spec: ModelSpec) -> Tensor:
    return Tensor(SCORES, "FP32", (len(spec.dimensions),))


def gateway_inputs(variant: Variant, needs_prompt: bool) -> tuple[Tensor, ...]:
    """What the gateway sends a Triton model of ``variant`` (a python model always takes PROMPT;
    a model without text ignores it)."""
    if variant == "python":
        return (*_frames(), Tensor(PROMPT, "BYTES", (1,)))
    if needs_prompt:
        return (*_frames(), Tensor(INPUT_IDS, "INT64", (-1,)), Tensor(ATTENTION_MASK, "INT64", (-1,)))
    return _frames()


def gateway_contract(spec: ModelSpec, variant: Variant) -> Contract:
    """What the gateway sends to (and gets from) the Triton model ``spec.name`` in ``variant``."""
    return Contract(inputs=gateway_inputs(variant, spec.needs_prompt), outputs=(scores(spec),))


# --- the compiled parts of each model family ----------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One compiled graph: its Triton model name, tensors, and what it is made from."""

    name: str  # Triton model name and ONNX file stem, e.g. "clip-segmental.image"
    contract: Contract


def parts(spec: ModelSpec, *, embed_dim: int | None = None, hidden: int | None = None) -> tuple[Part, ...]:
    """The compiled parts of the model family ``spec.name`` (sizes from the checkpoint's config).

    - ``signal``: the whole forward, one graph with the gateway contract.
    - ``clip-segmental``: the image tower (224 px crops -> normalised embeddings) and the text tower
      (token ids -> normalised embedding); resize/crop and the reward formulas are python steps.
    - ``videoalign``: Qwen2-VL's vision tower (patches of any count -> merged video embeddings); the
      language model stays in torch (README "Compiled models" says why).
    """
    name = spec.name
    if name == "signal":
        return (Part(name, gateway_contract(spec, "tensorrt")),)
    if name == "clip-segmental":
        d = embed_dim or -1
        image = Contract((Tensor(PIXELS, "FP32", (-1, 3, -1, -1)),), (Tensor(IMAGE_EMBEDS, "FP32", (-1, d)),))
        text = Contract(
            (Tensor(INPUT_IDS, "INT64", (-1,)), Tensor(ATTENTION_MASK, "INT64", (-1,))),
            (Tensor(TEXT_EMBEDS, "FP32", (d,)),),
        )
        return (Part(f"{name}.image", image), Part(f"{name}.text", text))
    if name == "videoalign":
        vision = Contract(
            (Tensor(PATCHES, "FP32", (-1, -1, 3 * 2 * 14 * 14)), Tensor(POSITIONS, "INT64", (-1, 2))),
            (Tensor(VIDEO_EMBEDS, "FP32", (-1, -1, hidden or -1)),),
        )
        return (Part(f"{name}.vision", vision),)
    raise ValueError(f"{name}: no compiled parts known (known: signal, clip-segmental, videoalign)")
