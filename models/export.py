"""ONNX export of each model's compiled parts (``models.contract.parts``), with their profiles.

``export(model, out)`` writes ``out/<part>.onnx`` per part and ``out/manifest.json``: for each
part its file, input/output names and the optimisation profiles the TensorRT build uses
(``models.profiles``). Graphs come from torch.export (``torch.onnx.export(dynamo=True)``) with
dynamic dimensions bounded by the same profiles, so what ONNX accepts is what the engine accepts.

The parts, as torch modules wrapping the loaded model's own weights:

- ``SignalGraph``: the whole signal forward (FRAMES uint8, NUM_FRAMES int32 -> SCORES);
- ``ClipImageTower`` / ``ClipTextTower``: CLIP's image tower on normalised 224 px crops and its
  text tower on token ids, each ending in the L2 normalisation the reward formulas expect;
- ``QwenVisionTower``: Qwen2-VL's vision tower for one video, on patches grouped per 2-frame
  group ([G, h*w, 1176]) with each patch's (row, col). transformers' tower attends within each
  group through a python loop over ``cu_seqlens``; here the groups are a batch dimension, so the
  same block-diagonal attention exports with G and h*w dynamic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.export import Dim

from models import contract, profiles
from models.registry import RewardModel

OPSET = 18


class SignalGraph(torch.nn.Module):
    """The signal forward. Two zero frames are appended (the counts mask them out, as any padding):
    with at least 3 frames no slice of the temporal signals is empty, so one graph serves 1..T.
    The uint8 frames are cast to float first (the forward's first step anyway): TensorRT takes a
    UINT8 network input only into a Cast (``_uint8_inputs_into_casts``)."""

    def forward(self, frames: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
        from models import signal

        frames = frames.float()
        pad = frames.new_zeros((frames.shape[0], 2, *frames.shape[2:]))
        return signal.forward(torch.cat([frames, pad], dim=1), num_frames.reshape(-1))


class ClipImageTower(torch.nn.Module):
    """PIXELS [B, S, 3, s, s] -> IMAGE_EMBEDS [B, S, D], L2-normalised."""

    def __init__(self, clip) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        b, s = pixels.shape[:2]
        emb = self.clip.get_image_features(pixel_values=pixels.flatten(0, 1)).pooler_output
        return F.normalize(emb.float(), dim=-1).reshape(b, s, -1)


class ClipTextTower(torch.nn.Module):
    """INPUT_IDS, ATTENTION_MASK [B, L] -> TEXT_EMBEDS [B, D], L2-normalised."""

    def __init__(self, clip) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        emb = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return F.normalize(emb.float(), dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class QwenVisionTower(torch.nn.Module):
    """PATCHES [G, N, 1176], POSITIONS [N, 2] -> VIDEO_EMBEDS [G, N/4, hidden] (Qwen2-VL's merged tokens)."""

    def __init__(self, visual) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, patches: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        v = self.visual
        g, n = patches.shape[:2]
        x = v.patch_embed(patches.reshape(g * n, -1)).reshape(g, n, -1)  # [G, N, E]
        freqs = positions[..., None].float() * v.rotary_pos_emb.inv_freq.float()  # [N, 2, F]
        half = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
        angles = torch.cat([half, half], dim=-1)  # [N, head_dim]
        cos, sin = angles.cos()[None, None], angles.sin()[None, None]  # [1, 1, N, head_dim]
        for block in v.blocks:
            attn = block.attn
            h = block.norm1(x)
            qkv = attn.qkv(h).reshape(g, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)  # [3, G, heads, N, hd]
            q, k, val = qkv[0], qkv[1], qkv[2]
            q = (q.float() * cos + _rotate_half(q.float()) * sin).to(val.dtype)
            k = (k.float() * cos + _rotate_half(k.float()) * sin).to(val.dtype)
            out = F.scaled_dot_product_attention(q, k, val, scale=attn.scaling)  # within each group
            x = x + attn.proj(out.transpose(1, 2).reshape(g, n, -1))
            x = x + block.mlp(block.norm2(x))
        return v.merger(x.reshape(g * n, -1)).reshape(g, n // 4, -1)


def vision_inputs(
    patches: torch.Tensor, grid: tuple[int, int, int], merge: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """``video_patches``' output [t*h*w, 1176] and grid (t, h, w) -> (PATCHES [t, h*w, 1176], POSITIONS
    [h*w, 2]): each patch's (row, col) in the merge-window order ``video_patches`` lays them out in."""
    t, h, w = grid
    rows = torch.arange(h).view(h // merge, merge, 1, 1).expand(-1, -1, w // merge, merge)
    cols = torch.arange(w).view(1, 1, w // merge, merge).expand(h // merge, merge, -1, -1)
    order = (0, 2, 1, 3)  # (h/m, w/m, mh, mw) as the patches
    positions = torch.stack([rows.permute(order).flatten(), cols.permute(order).flatten()], dim=-1)
    return patches.reshape(t, h * w, -1), positions


@dataclass(frozen=True)
class Exported:
    part: contract.Part
    path: Path
    profiles: list[profiles.Profile]
    batched: bool


def _dims(name: str, ranges: list[profiles.Range], batched: bool) -> dict[int, Dim]:
    """torch.export Dims for the axes that vary over the profiles; the sides of frames step by the size factor."""
    lo = [min(r.min[i] for r in ranges) for i in range(len(ranges[0].min))]
    hi = [max(r.max[i] for r in ranges) for i in range(len(ranges[0].min))]
    return {i: Dim(f"{name}_{i}", min=lo[i], max=hi[i]) for i in range(len(lo)) if lo[i] != hi[i]}


def _export(
    module: torch.nn.Module,
    part: contract.Part,
    args: Sequence[torch.Tensor],
    out: Path,
    part_profiles: list[profiles.Profile],
    batched: bool,
    dynamic_shapes=None,
) -> Exported:
    path = out / f"{part.name}.onnx"
    if dynamic_shapes is None:
        dynamic_shapes = tuple(
            _dims(t.name.lower(), [p[t.name] for p in part_profiles], batched) for t in part.contract.inputs
        )
    torch.onnx.export(
        module.eval(), tuple(args), str(path), input_names=list(part.contract.input_names),
        output_names=[t.name for t in part.contract.outputs], dynamic_shapes=dynamic_shapes,
        dynamo=True, opset_version=OPSET, external_data=False, verbose=False,
    )  # fmt: skip
    _uint8_inputs_into_casts(path)
    return Exported(part, path, part_profiles, batched)


def _uint8_inputs_into_casts(path: Path) -> None:
    """Make every UINT8 graph input feed only a Cast, as TensorRT requires (no other layer takes
    UINT8, not even Shape). torch's exporter reads dynamic sizes with Shape nodes on the input
    itself; those are pointed at the Cast's output, which has the same shape. Graphs without a
    UINT8 input are left untouched (the large towers are never rewritten)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    uint8 = [i.name for i in graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.UINT8]
    if not uint8:
        return
    for name in uint8:
        readers = [n for n in graph.node if name in n.input]
        casts = [n for n in readers if n.op_type == "Cast"]
        if not casts:
            raise ValueError(f"{path.name}: UINT8 input {name} has no Cast (TensorRT needs one)")
        for node in readers:
            if node.op_type in ("Shape", "Size"):
                node.input[:] = [casts[0].output[0] if i == name else i for i in node.input]
            elif node.op_type != "Cast":
                raise ValueError(
                    f"{path.name}: UINT8 input {name} feeds a {node.op_type} (TensorRT takes it only into a Cast)"
                )
        for cast in casts:  # its only input is the graph's: it may run first, before the Shapes now reading it
            copy = onnx.NodeProto()
            copy.CopyFrom(cast)
            graph.node.remove(cast)
            graph.node.insert(0, copy)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _signal(model: RewardModel, out: Path, max_batch: int) -> list[Exported]:
    spec = model.spec
    (part,) = contract.parts(spec)
    f = spec.resolution.size_factor
    _, square, longest = profiles.side_bounds(spec)
    batch, frames = Dim("batch", min=1, max=max_batch), Dim("frames", min=1, max=spec.sampling.max_frames)
    # Sides are multiples of the size factor: the region means export as reshapes (models/signal.py).
    h, w = Dim("h", min=1, max=longest // f), Dim("w", min=1, max=longest // f)
    shapes = ({0: batch, 1: frames, 2: f * h, 3: f * w}, {0: batch})
    example = (
        torch.randint(0, 256, (2, 5, 2 * f, 3 * f, 3), dtype=torch.uint8),
        torch.tensor([[5], [3]], dtype=torch.int32),
    )
    return [
        _export(SignalGraph(), part, example, out, profiles.part_profiles(spec, part.name, max_batch), True, shapes)
    ]


def _clip(model: RewardModel, out: Path, max_batch: int) -> list[Exported]:
    scorer = model.forward.__self__  # type: ignore[attr-defined]  # forward is a bound method of models.clip_segmental.model.ClipSegmental
    spec, clip, size = model.spec, scorer.model, scorer.image_size
    length = clip.config.text_config.max_position_embeddings
    image_part, text_part = contract.parts(spec, embed_dim=clip.config.projection_dim)
    batch = Dim("batch", min=1, max=max_batch)
    pixels = torch.randn(2, scorer.config.segments, 3, size, size)  # the segment frames ClipPre picks
    image_shapes = ({0: batch},)
    ids = torch.tensor([[1, 5, 7, 2], [1, 6, 2, 0]]) % clip.config.text_config.vocab_size
    tokens = Dim("tokens", min=2, max=length)
    text_shapes = ({0: batch, 1: tokens}, {0: batch, 1: tokens})
    kw = dict(image_size=size, segments=scorer.config.segments, text_length=length)
    return [
        _export(ClipImageTower(clip), image_part, (pixels,), out, profiles.part_profiles(spec, image_part.name, max_batch, **kw), True, image_shapes),
        _export(ClipTextTower(clip), text_part, (ids, torch.ones_like(ids)), out, profiles.part_profiles(spec, text_part.name, max_batch, **kw), True, text_shapes),
    ]  # fmt: skip


def _videoalign(model: RewardModel, out: Path, max_batch: int) -> list[Exported]:
    scorer = model.forward.__self__  # type: ignore[attr-defined]  # forward is a bound method of models.videoalign.model.VideoReward
    visual = scorer.model.model.visual
    spec = model.spec
    (part,) = contract.parts(spec, hidden=visual.merger.mlp[-1].out_features)
    ranges = profiles.part_profiles(spec, part.name, max_batch)
    groups = Dim("groups", min=1, max=max(r[contract.PATCHES].max[0] for r in ranges))
    windows = Dim("windows", min=1, max=max(r[contract.PATCHES].max[1] for r in ranges) // 4)
    shapes = ({0: groups, 1: 4 * windows}, {0: 4 * windows})
    frames = torch.randint(0, 256, (4, 56, 84, 3), dtype=torch.uint8)
    from models.videoalign.model import video_patches

    patches, grid = video_patches(frames)
    example = vision_inputs(patches.to(next(visual.parameters()).dtype), grid)
    return [_export(QwenVisionTower(visual), part, example, out, ranges, False, shapes)]


EXPORTERS = {"signal": _signal, "clip-segmental": _clip, "videoalign": _videoalign}


def export(model: RewardModel, out: Path, max_batch: int | None = None) -> list[Exported]:
    """Export ``model``'s compiled parts to ``out`` and add them to ``out/manifest.json``."""
    if model.spec.name not in EXPORTERS:
        raise ValueError(f"{model.spec.name}: no ONNX export (exportable: {', '.join(EXPORTERS)})")
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        done = EXPORTERS[model.spec.name](model, out, max_batch or model.spec.batching.max_batch_size)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for e in done:
        manifest[e.part.name] = {
            "model": model.spec.name,
            "spec_version": model.spec.version,
            "onnx": e.path.name,
            "batched": e.batched,
            "inputs": [t.name for t in e.part.contract.inputs],
            "outputs": [t.name for t in e.part.contract.outputs],
            "profiles": profiles.as_json(e.profiles),
        }
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return done
