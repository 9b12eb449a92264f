"""Tiny checkpoints in the published layouts, built from random weights (no downloads).

- ``qwen2vl_base``: a Hugging Face Qwen2-VL directory (config, safetensors, a byte-level BPE
  tokenizer trained here with Qwen2-VL's special tokens and chat template).
- ``videoreward``: a KwaiVGI/VideoReward-style directory on top of it: model_config.json and
  checkpoint-<step>/ with LoRA (adapter_model.safetensors, via PEFT) + non_lora_state_dict.pth,
  or a full model.pth.
- ``clip``: a Hugging Face CLIP directory (CLIPModel + tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.random_checkpoints import BASE_ID, QWEN_SPECIAL, bpe_tokenizer
from models.videoalign import prompt

# Qwen2-VL-Instruct's chat template (the parts used for one user turn with a video and text).
QWEN_CHAT_TEMPLATE = (
    "{% set video_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen2vl_base(directory: Path, seed: int = 0) -> Path:
    """A tiny Qwen2-VL (hidden 32, 1 text layer, 1 vision block) saved with save_pretrained."""
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    corpus = [prompt.rubric("a cat surfing a wave at sunset"), "a dog runs on the beach", "a red car in the rain"]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe_tokenizer(QWEN_SPECIAL, corpus, 400),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    ids = {t: fast.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(fast),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            initializer_range=0.3,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=1,
            embed_dim=32,
            hidden_size=32,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
            initializer_range=0.3,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return _save(Qwen2VLForConditionalGeneration, config, fast, directory, seed)


def _reward_model(base: Path, seed: int):
    """What VideoAlign's training starts from, with random "trained" weights drawn from ``seed``: the
    tokenizer with the reward tokens added, Qwen2-VL with its embeddings resized and the reward
    tokens' rows drawn, and an ``rm_head`` weight [3, hidden]."""
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_tokens(list(prompt.REWARD_TOKENS), special_tokens=True)
    model = Qwen2VLForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer))
    hidden = model.config.text_config.hidden_size
    with torch.no_grad():
        model.get_input_embeddings().weight[-3:] = torch.randn(3, hidden)  # the trained reward-token embeddings
    return tokenizer, model, torch.randn(3, hidden) * 0.3


def videoreward(
    directory: Path,
    base: Path,
    layout: str = "lora",
    step: int = 7,
    seed: int = 1,
    inference_config: dict | None = None,
) -> Path:
    """A VideoReward checkpoint directory over ``base``: as VideoAlign trains it (reward tokens added,
    embeddings resized, LoRA on the language model's linears, a bias-free rm_head), random weights."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file

    tokenizer, model, rm_head = _reward_model(base, seed)
    norm = (
        inference_config
        if inference_config is not None
        else {
            "VQ_mean": 3.6757,
            "VQ_std": 2.2476,
            "MQ_mean": 1.1646,
            "MQ_std": 1.3811,
            "TA_mean": 2.8105,
            "TA_std": 2.5121,
        }
    )
    lora_r, lora_alpha = 4, 8
    step_dir = directory / f"checkpoint-{step}"
    step_dir.mkdir(parents=True, exist_ok=True)
    # Older steps must be ignored: the newest one is the checkpoint.
    (directory / f"checkpoint-{step - 1}").mkdir(exist_ok=True)

    # VideoAlign saved from transformers 4.45, whose layout had model.* (text) and visual.* at the top.
    def legacy(key: str) -> str:
        return key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")

    if layout == "lora":
        peft_model = get_peft_model(
            model, LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=["q_proj", "v_proj", "down_proj"])
        )
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn_like(p) * 0.2)
        adapter = get_peft_model_state_dict(peft_model)  # keys: base_model.model.<module>.lora_A.weight
        save_file({legacy(k): v.contiguous() for k, v in adapter.items()}, str(step_dir / "adapter_model.safetensors"))
        embed_key = "base_model.model.model.embed_tokens.weight"
        torch.save(
            {
                embed_key: model.get_input_embeddings().weight.detach().clone(),
                "base_model.model.rm_head.weight": rm_head,
            },
            step_dir / "non_lora_state_dict.pth",
        )
    else:
        state = {legacy(k): v for k, v in model.state_dict().items()}
        state["rm_head.weight"] = rm_head
        torch.save(state, step_dir / "model.pth")
    config = {
        "data_config": {
            "meta_data": "x.csv",
            "data_dir": "x",
            "max_frame_pixels": 448 * 448,
            "num_frames": None,
            "fps": 2.0,
            "eval_dim": ["VQ", "MQ", "TA"],
            "prompt_template_type": "detailed_special",
            "sample_type": "uniform",
        },
        "model_config": {
            "model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct",
            "output_dim": 3,
            "use_special_tokens": True,
            "reward_token": "special",
            "torch_dtype": "bfloat16",
            "loss_type": "btt",
        },
        "peft_lora_config": {
            "lora_enable": layout == "lora",
            "vision_lora": False,
            "lora_r": lora_r,
            "lora_alpha": lora_alpha,
            "lora_dropout": 0.05,
            "use_rslora": False,
        },
        "inference_config": norm,
        "training_args": {},
    }
    (directory / "model_config.json").write_text(json.dumps(config, indent=2))
    return directory


def clip(directory: Path, seed: int = 2) -> Path:
    """A tiny CLIP (hidden 32, 1 layer per tower, 32x32 images, patch 8) with a BPE tokenizer."""
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    corpus = [
        "a cat surfing a wave at sunset",
        "a dog runs on the beach",
        "a red car in the rain",
        "a blurry video",
        "a video",
    ]
    from tokenizers.processors import TemplateProcessing

    bpe = bpe_tokenizer(["<|startoftext|>", "<|endoftext|>"], corpus, 300)
    # As CLIP's tokenizer: every sequence starts and ends with its marks (CLIP pools at the first <|endoftext|>).
    bpe.post_processor = TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[(t, bpe.token_to_id(t)) for t in ("<|startoftext|>", "<|endoftext|>")],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(fast),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=fast.bos_token_id,
            eos_token_id=fast.eos_token_id,
            pad_token_id=fast.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    return _save(CLIPModel, config, fast, directory, seed)


def _save(model_class, config, tokenizer, directory: Path, seed: int) -> Path:
    """Randomly initialise ``model_class(config)`` with ``seed`` and save it with its tokenizer."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# Session fixtures (tests/conftest.py imports them, so each is built once per session).


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints on disk: Qwen2-VL base, VideoReward (LoRA and full layouts), CLIP."""
    root = tmp_path_factory.mktemp("checkpoints")
    base = qwen2vl_base(root / "Qwen2-VL-tiny")
    return {
        "base": base,
        "videoalign": videoreward(root / "VideoReward", base, layout="lora"),
        "videoalign-full": videoreward(root / "VideoReward-full", base, layout="full", seed=3),
        "clip": clip(root / "clip-tiny"),
    }


def videoreward_as_trained(
    directory: Path, merged: Path, base: Path, exclude: list[str] | None, save: str = "step", seed: int = 4
) -> Path:
    """A VideoReward checkpoint saved the way VideoAlign's training code saves one, over ``base``:

    the reward model (Qwen2-VL plus ``rm_head``) is wrapped by PEFT with LoRA on every Linear and
    Embedding except ``visual`` (``vision_lora`` false) and the names in ``exclude``
    (``lora_namespan_exclude``; train.sh passes lm_head, rm_head, embed_tokens; None = its default []);
    the vision tower, ``rm_head`` and the input embeddings train in full. ``save="step"`` writes a
    checkpoint step as the trainer does (adapter via ``save_pretrained``; ``non_lora_state_dict.pth`` =
    every trained parameter whose name has no ``lora_``, so a LoRA-wrapped module's own weight appears
    as ``<module>.base_layer.weight``); ``save="final"`` writes the PEFT model's whole state dict as
    ``model.pth`` (its ``final_model.pth``). The same trained weights, LoRA merged, go to ``merged`` in
    the plain full layout, which is what loading either must equal."""
    from peft import LoraConfig, get_peft_model

    tokenizer, model, rm_head = _reward_model(base, seed)
    hidden = model.config.text_config.hidden_size
    model.rm_head = torch.nn.Linear(hidden, 3, bias=False)
    with torch.no_grad():
        model.rm_head.weight.copy_(rm_head)
    skip = (exclude or []) + ["visual"]
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and not any(s in name for s in skip)
    ]
    lora_r, lora_alpha = 4, 8
    peft_model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=targets))
    for name, p in peft_model.named_parameters():  # as train_reward.py sets requires_grad
        p.requires_grad = "lora_" in name or ".visual." in name or ".rm_head." in name or "embed_tokens" in name
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.2)

    def legacy(key: str) -> str:
        return key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")

    step_dir = directory / "checkpoint-11"
    step_dir.mkdir(parents=True, exist_ok=True)
    if save == "step":
        peft_model.save_pretrained(step_dir / "adapter")  # the trainer's PEFT save: adapter_model.safetensors
        (step_dir / "adapter" / "adapter_model.safetensors").rename(step_dir / "adapter_model.safetensors")
        non_lora = {
            legacy(k): p.detach().clone()
            for k, p in peft_model.named_parameters()
            if "lora_" not in k and p.requires_grad
        }
        torch.save(non_lora, step_dir / "non_lora_state_dict.pth")
    else:
        torch.save({legacy(k): v for k, v in peft_model.state_dict().items()}, step_dir / "model.pth")
    full = peft_model.merge_and_unload()
    rm_head = full.rm_head.weight.detach().clone()
    del full.rm_head
    state = {legacy(k): v for k, v in full.state_dict().items()} | {"rm_head.weight": rm_head}
    (merged / "checkpoint-11").mkdir(parents=True, exist_ok=True)
    torch.save(state, merged / "checkpoint-11" / "model.pth")
    norm = {
        "VQ_mean": 3.6757,
        "VQ_std": 2.2476,
        "MQ_mean": 1.1646,
        "MQ_std": 1.3811,
        "TA_mean": 2.8105,
        "TA_std": 2.5121,
    }
    for target, lora in ((directory, True), (merged, False)):
        config = {
            "data_config": {
                "max_frame_pixels": 448 * 448,
                "num_frames": None,
                "fps": 2.0,
                "prompt_template_type": "detailed_special",
                "sample_type": "uniform",
            },
            "model_config": {
                "model_name_or_path": BASE_ID,
                "output_dim": 3,
                "use_special_tokens": True,
                "reward_token": "special",
            },
            "peft_lora_config": {
                "lora_enable": lora,
                "vision_lora": False,
                "lora_r": lora_r,
                "lora_alpha": lora_alpha,
                "lora_namespan_exclude": exclude,
                "use_rslora": False,
            },
            "inference_config": norm,
        }
        (target / "model_config.json").write_text(json.dumps(config, indent=2))
    return directory
