"""VideoReward inference on transformers' Qwen2-VL: spec, loading and the forward.

The forward takes frames the gateway already sampled and resized per the spec, turns them into
Qwen2-VL video patches, builds the rubric prompt, runs the vision tower and the language model
and reads the bias-free ``hidden -> 3`` head at the three reward tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from models import fingerprint
from models.placement import CPU, Placement
from models.registry import RewardModel, Stages
from models.spec import Batching, Dimension, FrameSampling, ModelSpec, Pairwise, Resolution
from models.videoalign import checkpoint, prompt
from models.videoalign.checkpoint import CheckpointError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Qwen2VLForConditionalGeneration

# qwen-vl-utils (the version VideoAlign's vision_process.py derives from) for videos.
IMAGE_FACTOR = 28  # patch 14 x spatial merge 2
VIDEO_MIN_PIXELS = 128 * 28 * 28
FPS_MIN_FRAMES, FPS_MAX_FRAMES, FRAME_FACTOR = 4, 768, 2
# Qwen2-VL image processor: rescale 1/255, OpenAI CLIP mean/std, 14 px patches, 2 frames per patch, 2x2 merge.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def make_spec(config: checkpoint.VideoRewardConfig, version: str) -> ModelSpec:
    """The spec for a checkpoint: VideoAlign's sampling and resize rule with its config's fps and max pixels."""

    def raw(d: str, what: str) -> Dimension:
        mean, std = norm_stats(config)[d]
        return Dimension(
            name=d, mean=mean, std=std, description=f"{what}: the head's raw output (normalise: (raw - mean) / std)"
        )

    return ModelSpec(
        name="videoalign",
        version=version,
        description="VideoReward (VideoAlign): Qwen2-VL-2B with a 3-way reward head at rubric tokens.",
        dimensions=(
            raw("VQ", "visual quality"),
            raw("MQ", "motion quality"),
            raw("TA", "text alignment"),
            Dimension(
                name="Overall",
                mean=0.0,
                std=1.0,
                derived=True,
                description="VideoAlign's Overall: the sum of the normalised VQ, MQ and TA, whether or not normalise is asked",
            ),
        ),
        sampling=FrameSampling(
            mode="fps",
            fps=config.fps,
            min_frames=FPS_MIN_FRAMES,
            max_frames=FPS_MAX_FRAMES,
            multiple_of=FRAME_FACTOR,
            rounding="nearest",
        ),
        resolution=Resolution(
            max_pixels=config.max_frame_pixels,
            min_pixels=VIDEO_MIN_PIXELS,
            size_factor=IMAGE_FACTOR,
            filter="bicubic",
            antialias=True,
        ),
        needs_prompt=True,
        prompt_forbidden=prompt.CONTROL_TOKEN,
        pairwise=Pairwise(model="rao-kupper", theta=5.0),
        batching=Batching(max_batch_size=4, max_wait_ms=10.0),
    )


# VideoReward's published inference_config (DESIGN.md 4.2), for checkpoints whose config lacks one.
PUBLISHED_NORM = {"VQ": (3.6757, 2.2476), "MQ": (1.1646, 1.3811), "TA": (2.8105, 2.5121)}


def norm_stats(config: checkpoint.VideoRewardConfig) -> dict[str, tuple[float, float]]:
    """(mean, std) per dimension: the checkpoint's inference_config, else the published values."""
    return {d: config.norm.get(d, PUBLISHED_NORM[d]) for d in ("VQ", "MQ", "TA")}


def video_patches(
    frames: torch.Tensor, patch: int = 14, temporal: int = 2, merge: int = 2
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """uint8 [n, H, W, 3] -> (float32 [t*h*w, 3*temporal*patch*patch], (t, h, w) in patches), as
    Qwen2VLImageProcessor does for a video: normalise, repeat the last frame to a multiple of
    ``temporal``, then order patches by time, merge-window row/col, position in the window."""
    x = frames.float().div(255.0).permute(0, 3, 1, 2)  # [n,3,H,W]
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if x.shape[0] % temporal:
        x = torch.cat([x, x[-1:].expand(temporal - x.shape[0] % temporal, -1, -1, -1)])
    n, c, hh, ww = x.shape
    t, h, w = n // temporal, hh // patch, ww // patch
    x = x.reshape(t, temporal, c, h // merge, merge, patch, w // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, h/m, w/m, mh, mw, c, temporal, ph, pw
    return x.reshape(t * h * w, c * temporal * patch * patch), (t, h, w)


@dataclass
class VideoReward:
    """A loaded checkpoint: Qwen2-VL, the reward head, the tokenizer, normalisation."""

    model: Qwen2VLForConditionalGeneration
    head: torch.nn.Linear
    tokenizer: PreTrainedTokenizerBase
    reward_ids: tuple[int, ...]  # VQ, MQ, TA
    mean: torch.Tensor  # [3]
    std: torch.Tensor  # [3]

    def pre(self, frames: torch.Tensor, num_frames: torch.Tensor, prompts: Sequence[str]) -> _Prepared:
        """Host work, no device compute: per-item patch grids, the tokenised rubric prompts, right-padded
        ids and mask (pinned on CUDA so the copy in ``core`` is asynchronous)."""
        merge = self.model.config.vision_config.spatial_merge_size  # type: ignore[union-attr]  # transformers types a sub-config dict | config | None; a config once loaded
        temporal, patch = 2, 14
        counts = [int(n) for n in num_frames]
        h, w = frames.shape[2] // patch, frames.shape[3] // patch
        grids = [(-(-n // temporal), h, w) for n in counts]  # the last frame repeats to a multiple of 2
        ids = [
            self.tokenizer(prompt.chat(p, t * gh * gw // merge**2), add_special_tokens=False)["input_ids"]
            for p, (t, gh, gw) in zip(prompts, grids)
        ]
        # Right padding and positions 0..L-1 per row, as the reference (padding_side="right"; its
        # forward passes no position_ids, so transformers 4.45 used sequential positions on all 3 axes).
        length = max(len(i) for i in ids)
        pin = self.head.weight.is_cuda
        input_ids = torch.full((len(ids), length), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        for b, i in enumerate(ids):
            input_ids[b, : len(i)], mask[b, : len(i)] = torch.tensor(i), 1
        at = [[i.index(t) for t in self.reward_ids] for i in ids]  # VQ, MQ, TA token positions per row
        if pin:
            input_ids, mask = input_ids.pin_memory(), mask.pin_memory()
        return _Prepared(frames, counts, grids, input_ids, mask, torch.tensor(at))

    def core(self, x: _Prepared) -> torch.Tensor:
        """Device work: patches, vision tower, language model, reward head -> float32 [B, 4]."""
        device, dtype = self.head.weight.device, self.head.weight.dtype
        merge = self.model.config.vision_config.spatial_merge_size  # type: ignore[union-attr]  # transformers types a sub-config dict | config | None; a config once loaded
        frames = x.frames.to(device, non_blocking=True)
        patches = torch.cat([video_patches(frames[b, :n], merge=merge)[0] for b, n in enumerate(x.counts)])
        input_ids = x.input_ids.to(device, non_blocking=True)
        mask = x.mask.to(device, non_blocking=True)
        qwen = self.model.model
        embeds = qwen.get_input_embeddings()(input_ids)
        video = qwen.get_video_features(patches.to(dtype), torch.tensor(x.grids, device=device)).pooler_output
        video_mask = (input_ids == self.model.config.video_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(video_mask, torch.cat(video).to(embeds.dtype))
        b, length = input_ids.shape
        positions = torch.arange(length, device=device).view(1, 1, -1).expand(3, b, -1)
        hidden = qwen.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        ).last_hidden_state
        at = x.reward_at.to(device, non_blocking=True)  # [B, 3]
        tokens = hidden[torch.arange(b, device=device)[:, None], at]  # [B, 3 tokens, hidden]
        raw = self.head(tokens).diagonal(dim1=1, dim2=2).float()  # output k at token k
        norm = (raw - self.mean) / self.std
        return torch.cat([raw, norm.sum(1, keepdim=True)], dim=1)

    def forward(self, frames: torch.Tensor, num_frames: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """uint8 [B, T, H, W, 3] (padded along T), counts [B], prompts -> float32 [B, 4]: raw VQ, MQ, TA and
        Overall, the sum of the normalised three (VideoAlign's ``reward(use_norm=True)``)."""
        return self.core(self.pre(frames, num_frames, prompts))


@dataclass
class _Prepared:
    """What ``VideoReward.pre`` hands ``core``."""

    frames: torch.Tensor
    counts: list[int]
    grids: list[tuple[int, int, int]]
    input_ids: torch.Tensor
    mask: torch.Tensor
    reward_at: torch.Tensor  # [B, 3] positions of the reward tokens


def read_spec(directory: Path) -> ModelSpec:
    """The spec of a checkpoint directory, without loading weights (a gateway in front of Triton needs only this)."""
    config, step = _config_and_step(Path(directory))
    return make_spec(config, version=fingerprint.version(directory, step.name))


def _config_and_step(directory: Path) -> tuple[checkpoint.VideoRewardConfig, Path]:
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory")
    config = checkpoint.read_config(directory)
    if config.output_dim != 3:
        raise CheckpointError(f"{directory / 'model_config.json'}: output_dim must be 3, got {config.output_dim}")
    return config, checkpoint.latest_step(directory)


def load(directory: Path, base_dirs: dict[str, Path] | None = None, placement: Placement = CPU) -> RewardModel:
    """Load a VideoReward checkpoint directory (layout in ``checkpoint``) onto ``placement``: weights
    are read and LoRA is merged in float32 on the host, then cast and moved once; SDPA attention."""
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    directory = Path(directory)
    config, step = _config_and_step(directory)
    base = checkpoint.base_dir(directory, config, base_dirs or {})
    plain, lora = checkpoint.state_dicts(step, config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = Qwen2VLForConditionalGeneration.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
    except Exception as exc:
        raise CheckpointError(
            f"{base}: cannot load the base Qwen2-VL model or tokenizer ({type(exc).__name__}: {exc})"
        ) from exc
    # As at training: the reward tokens are added special tokens and the embeddings grow to match.
    tokenizer.add_tokens(list(prompt.REWARD_TOKENS), special_tokens=True)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embed = "model.language_model.embed_tokens"
    if embed + ".weight" not in plain and not any(k.startswith(embed + ".lora_") for k in lora):
        raise CheckpointError(f"{step}: no trained embeddings for the reward tokens ({embed}.weight)")
    head = torch.nn.Linear(model.config.text_config.hidden_size, 3, bias=False)  # type: ignore[union-attr]  # transformers types a sub-config dict | config | None; a config once loaded
    head_weight = plain.pop("rm_head.weight")
    if tuple(head_weight.shape) != tuple(head.weight.shape):
        raise CheckpointError(
            f"{step}: rm_head.weight has shape {tuple(head_weight.shape)}, expected {tuple(head.weight.shape)}"
        )
    with torch.no_grad():
        head.weight.copy_(head_weight.float())
    plain.pop("lm_head.weight", None)  # scoring reads the head, never the LM's logits
    lora = {k: v for k, v in lora.items() if not k.startswith("lm_head.")}
    try:
        result = model.load_state_dict(plain, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{step}: weights do not fit the base model {base} ({exc})") from exc
    if result.unexpected_keys:
        raise CheckpointError(f"{step}: weights not in the Qwen2-VL model: {result.unexpected_keys[:5]}")
    checkpoint.merge_lora(dict(model.named_parameters()) | {"rm_head.weight": head.weight}, lora, config, step)
    # A plain cast, rotary frequency tables (``inv_freq`` buffers) included: VideoAlign builds the
    # model the same way for training and inference (``create_model_and_processor``:
    # ``model.to(torch.bfloat16)``), so its checkpoints were trained on bf16 tables.
    model.to(device=placement.device, dtype=placement.dtype).eval()  # type: ignore[call-arg]  # transformers' @wraps(Module.to) hides that `to` is a method
    head.to(device=placement.device, dtype=placement.dtype).eval()
    reward_ids = tuple(tokenizer.convert_tokens_to_ids(list(prompt.REWARD_TOKENS)))  # type: ignore[arg-type]  # a list for a list
    stats = norm_stats(config)
    mean = torch.tensor([stats[d][0] for d in ("VQ", "MQ", "TA")], device=placement.device)
    std = torch.tensor([stats[d][1] for d in ("VQ", "MQ", "TA")], device=placement.device)
    scorer = VideoReward(model, head, tokenizer, reward_ids, mean, std)
    spec = make_spec(config, version=fingerprint.version(directory, step.name))
    return RewardModel(spec=spec, forward=scorer.forward, placement=placement, stages=Stages(scorer.pre, scorer.core))
