"""Read a VideoReward checkpoint directory in the layout KwaiVGI/VideoReward publishes.

    <dir>/model_config.json        data_config (fps, max_frame_pixels, ...), model_config
                                   (model_name_or_path, output_dim, use_special_tokens, reward_token),
                                   peft_lora_config (lora_enable, lora_r, lora_alpha, use_rslora),
                                   inference_config (VQ/MQ/TA mean and std)
    <dir>/checkpoint-<step>/       the newest step is used:
        model.pth                  a full state dict, or
        adapter_model.safetensors  LoRA weights, merged into the base here, plus
        non_lora_state_dict.pth    the trained non-LoRA weights (rm_head, embeddings, ...)

The base model (``model_name_or_path``, Qwen2-VL-2B-Instruct for the published weights) is a
Hugging Face directory: the path itself, that path relative to ``<dir>``, or ``base_dirs[name]``.
Keys are saved from a PEFT-wrapped ``transformers==4.45`` model; they are mapped onto the current
``transformers`` layout (``model.language_model.*``, ``model.visual.*``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint directory is missing or malformed; the message names the path and the problem."""


@dataclass(frozen=True)
class VideoRewardConfig:
    """The parts of ``model_config.json`` inference needs."""

    base: str
    fps: float = 2.0
    max_frame_pixels: int = 448 * 448
    output_dim: int = 3
    lora: bool = False
    lora_r: int = 16
    lora_alpha: float = 32.0
    use_rslora: bool = False
    norm: dict[str, tuple[float, float]] = field(default_factory=dict)  # dimension -> (mean, std)


def read_config(directory: Path) -> VideoRewardConfig:
    path = directory / "model_config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a VideoReward checkpoint directory holds model_config.json)")
    try:
        raw = json.loads(path.read_text())
        data, model = raw.get("data_config", {}), raw["model_config"]
        lora = raw.get("peft_lora_config") or {}
        inference = raw.get("inference_config") or {}
        if data.get("num_frames") not in (None, 0):
            raise CheckpointError(f"{path}: data_config.num_frames is set; only fps sampling is supported")
        if data.get("sample_type", "uniform") != "uniform":
            raise CheckpointError(f"{path}: data_config.sample_type must be 'uniform'")
        if data.get("prompt_template_type", "detailed_special") != "detailed_special":
            raise CheckpointError(f"{path}: data_config.prompt_template_type must be 'detailed_special'")
        if not model.get("use_special_tokens", True) or model.get("reward_token", "special") != "special":
            raise CheckpointError(f"{path}: model_config must use the special reward tokens")
        norm = (
            {d: (float(inference[f"{d}_mean"]), float(inference[f"{d}_std"])) for d in ("VQ", "MQ", "TA")}
            if inference
            else {}
        )
        return VideoRewardConfig(
            base=str(model["model_name_or_path"]),
            fps=float(data.get("fps", 2.0)),
            max_frame_pixels=int(data.get("max_frame_pixels", 448 * 448)),
            output_dim=int(model.get("output_dim", 3)),
            lora=bool(lora.get("lora_enable", False)),
            lora_r=int(lora.get("lora_r", 16)),
            lora_alpha=float(lora.get("lora_alpha", 32)),
            use_rslora=bool(lora.get("use_rslora", False)),
            norm=norm,
        )
    except CheckpointError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed ({type(exc).__name__}: {exc})") from exc


def base_dir(directory: Path, config: VideoRewardConfig, base_dirs: dict[str, Path]) -> Path:
    """Where the base Qwen2-VL weights are: configured, absolute, or relative to the checkpoint."""
    for candidate in (base_dirs.get(config.base), Path(config.base), directory / config.base):
        if candidate is not None and (Path(candidate) / "config.json").is_file():
            return Path(candidate)
    raise CheckpointError(
        f"{directory / 'model_config.json'}: base model {config.base!r} not found as a local directory with "
        f'config.json (set VRS_BASE_MODEL_DIRS=\'{{"{config.base}": "/path/to/it"}}\')'
    )


def latest_step(directory: Path) -> Path:
    steps = [p for p in directory.glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    if not steps:
        raise CheckpointError(f"{directory}: no checkpoint-<step> directory")
    return max(steps, key=lambda p: int(p.name.split("-")[1]))


def _current_key(key: str) -> str:
    """A transformers-4.45 (optionally PEFT-wrapped) key -> the current Qwen2VLForConditionalGeneration key.

    PEFT wraps each LoRA target: its own weight becomes ``<module>.base_layer.weight`` (saved in
    ``non_lora_state_dict.pth`` when training updated it, e.g. a LoRA-wrapped ``rm_head``, and in a
    full ``model.pth`` of a PEFT model) and ``modules_to_save`` keeps a trained copy under
    ``<module>.modules_to_save.default``; both map to ``<module>.weight``, and LoRA merges on top."""
    key = key.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.language_model.", "model.visual.")):
        return "model.language_model." + key.removeprefix("model.")
    return key


def state_dicts(step_dir: Path, config: VideoRewardConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(plain weights, LoRA weights), keys in the current layout."""
    from safetensors.torch import load_file

    full, adapter, non_lora = (
        step_dir / "model.pth",
        step_dir / "adapter_model.safetensors",
        step_dir / "non_lora_state_dict.pth",
    )
    try:
        if full.is_file():
            plain = torch.load(full, map_location="cpu", weights_only=True)
            lora: dict[str, torch.Tensor] = {}
        elif adapter.is_file() and non_lora.is_file():
            plain = torch.load(non_lora, map_location="cpu", weights_only=True)
            lora = load_file(str(adapter))
        else:
            raise CheckpointError(
                f"{step_dir}: needs model.pth, or adapter_model.safetensors and non_lora_state_dict.pth"
            )
    except CheckpointError:
        raise
    except Exception as exc:  # torch.load / safetensors raise several types on corrupt files
        raise CheckpointError(f"{step_dir}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    # PEFT's save_pretrained also writes whole layers it wrapped (embeddings): plain weights in the adapter file.
    layers = _split({k: v for k, v in lora.items() if "lora_" not in k}, step_dir)
    lora = _split_lora(lora) | _split_lora(plain)
    plain = _split(plain, step_dir)
    for key, value in layers.items():
        if key in plain and not torch.equal(plain[key], value):
            raise CheckpointError(f"{step_dir}: adapter and non-LoRA weights disagree on {key!r}")
        plain.setdefault(key, value)
    if lora and not config.lora:
        raise CheckpointError(f"{step_dir}: LoRA weights present but peft_lora_config.lora_enable is false")
    if "rm_head.weight" not in plain:
        raise CheckpointError(f"{step_dir}: no rm_head.weight among the weights")
    return plain, lora


def _split_lora(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The LoRA weights of a state dict (an adapter file, or a full ``model.pth`` of a PEFT model)."""
    return {_current_key(k): v for k, v in state.items() if "lora_" in k}


def _split(state: dict[str, torch.Tensor], where: Path) -> dict[str, torch.Tensor]:
    """The plain weights in the current layout; PEFT's frozen copies (``original_module``) dropped."""
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if "lora_" in key or ".original_module." in key:
            continue
        current = _current_key(key)
        if current in plain:
            raise CheckpointError(
                f"{where}: two weights for {current!r} (one of them PEFT-wrapped); cannot tell which was trained"
            )
        plain[current] = value
    return plain


def merge_lora(
    params: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], config: VideoRewardConfig, where: Path
) -> None:
    """Fold LoRA pairs into the weights ``params`` (name -> parameter): W += s * B @ A (Linear),
    W += s * (B @ A)^T (Embedding), s = alpha / r, or alpha / sqrt(r) with rsLoRA (PEFT's scaling).
    Keys are ``<module>.lora_A.weight`` (adapter files) or ``<module>.lora_A.default.weight`` (a PEFT
    model's own state dict)."""
    scale = config.lora_alpha / (math.sqrt(config.lora_r) if config.use_rslora else config.lora_r)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in lora.items():
        m = re.fullmatch(r"(.+)\.lora_(A|B|embedding_A|embedding_B)(?:\.default)?(?:\.weight)?", key)
        if m is None:
            raise CheckpointError(f"{where}: unexpected LoRA key {key!r}")
        pairs.setdefault(m.group(1), {})[m.group(2)] = value
    with torch.no_grad():
        for module, ab in pairs.items():
            target = params.get(module + ".weight")
            if target is None or len(ab) != 2:
                raise CheckpointError(f"{where}: LoRA for {module!r} does not match the base model")
            if "A" in ab:
                delta = ab["B"].float() @ ab["A"].float()
            else:
                delta = (ab["embedding_B"].float() @ ab["embedding_A"].float()).T
            if delta.shape != target.shape:
                raise CheckpointError(
                    f"{where}: LoRA for {module!r} has shape {tuple(delta.shape)}, weight {tuple(target.shape)}"
                )
            target += (scale * delta).to(target.dtype)
