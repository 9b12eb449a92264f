"""Architecture-true checkpoints with random weights, for GPU benchmarks (weights cannot be downloaded
here, and compute cost depends only on shapes).

- ``qwen2vl_2b``: a Hugging Face Qwen2-VL directory with Qwen2-VL-2B-Instruct's published
  configuration (text: hidden 1536, 28 layers, 12 heads / 2 KV heads, MLP 8960, vocabulary
  151936, M-RoPE sections 16/24/24, theta 1e6, tied embeddings; vision: 32 blocks of width
  1280, 16 heads, MLP ratio 4, 14 px patches, 2 frames per patch, 2x2 merge into 1536).
- ``videoreward``: a KwaiVGI/VideoReward-layout directory over it (model_config.json,
  checkpoint-<step>/ with a LoRA adapter + non_lora_state_dict.pth holding the reward-token
  embeddings and the bias-free ``rm_head``), loaded by models/videoalign like the real one.
- ``clip_vit_l14``: a Hugging Face CLIP directory with openai/clip-vit-large-patch14's
  configuration (vision: 24 layers, width 1024, 16 heads, MLP 4096, 14 px patches at 224;
  text: 12 layers, width 768, 12 heads, 77 positions, vocabulary 49408; projection 768).

The tokenizers are small byte-level BPEs trained here with the real special tokens (the real
vocabularies cannot be downloaded); prompts therefore tokenise into somewhat more tokens than
with Qwen's tokenizer. The text part of a VideoReward prompt is a few hundred tokens next to
thousands of video tokens, so the cost barely moves. ``shrink`` overrides config fields for
tests (same layout, tiny widths and depths).

    python -m models.random_checkpoints /ckpt   # writes /ckpt/{Qwen2-VL-2B-Instruct,VideoReward,clip-vit-large-patch14}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from models.videoalign import prompt

BASE_ID = "Qwen/Qwen2-VL-2B-Instruct"
QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen/Qwen2-VL-2B-Instruct config.json (text part; the vision part is Qwen2VLVisionConfig's
# defaults with hidden_size 1536, as the published file leaves them implicit).
QWEN2VL_2B_TEXT = dict(
    vocab_size=151936,
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
)
QWEN2VL_2B_VISION = dict(
    depth=32,
    embed_dim=1280,
    hidden_size=1536,
    num_heads=16,
    mlp_ratio=4,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    in_channels=3,
    hidden_act="quick_gelu",
)
# openai/clip-vit-large-patch14 config.json.
CLIP_L14_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)
CLIP_L14_VISION = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    hidden_act="quick_gelu",
)
CLIP_L14_PROJECTION = 768


def bpe_tokenizer(special: list[str], corpus: list[str], vocab_size: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``corpus``, with ``special`` tokens first
    (the real tokenizers cannot be downloaded here; the tests' tiny checkpoints use this too)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return tok


def _bpe(special: list[str], corpus: list[str], vocab_size: int, **tokens):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer(special, corpus, vocab_size), **tokens)


def _corpus() -> list[str]:
    subjects = [
        "a cat surfing a wave at sunset",
        "a dog runs on the beach",
        "a red car in the rain",
        "a person dancing",
    ]
    return [prompt.rubric(s) for s in subjects] + subjects


def _save(model_class, config, tokenizer, directory: Path, seed: int, dtype: torch.dtype) -> Path:
    """Random init (on a GPU if there is one: seconds instead of minutes for 2B parameters), then save."""
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = model_class(config).to(dtype).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def qwen2vl_2b(directory: Path, shrink: dict | None = None, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Qwen2-VL-2B-Instruct's architecture with random weights (``shrink``: {"text": {...}, "vision": {...}} overrides)."""
    from transformers import Qwen2VLForConditionalGeneration

    tokenizer = _bpe(
        QWEN_SPECIAL,
        _corpus(),
        2000,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    config = qwen2vl_2b_config(ids, shrink)
    return _save(Qwen2VLForConditionalGeneration, config, tokenizer, Path(directory), seed, dtype)


def qwen2vl_2b_config(ids: dict[str, int] | None = None, shrink: dict | None = None):
    """The Qwen2VLConfig (special-token ids from ``ids``, else Qwen's own)."""
    from transformers import Qwen2VLConfig

    shrink = shrink or {}
    ids = ids or {
        "<|endoftext|>": 151643,
        "<|im_end|>": 151645,
        "<|image_pad|>": 151655,
        "<|video_pad|>": 151656,
        "<|vision_start|>": 151652,
        "<|vision_end|>": 151653,
    }
    text = (
        QWEN2VL_2B_TEXT
        | {
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        }
        | shrink.get("text", {})
    )
    return Qwen2VLConfig(
        text_config=text,
        vision_config=QWEN2VL_2B_VISION | shrink.get("vision", {}),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def videoreward(directory: Path, base: Path, seed: int = 1, lora_r: int = 16) -> Path:
    """A VideoReward checkpoint over ``base`` in the LoRA layout VideoAlign trains (reward tokens
    added, their embeddings and ``rm_head`` in non_lora_state_dict.pth, LoRA on the language
    model's q/k/v/o projections), random weights. Keys use transformers 4.45's names, as published."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer

    directory, base = Path(directory), Path(base)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(base).text_config
    tokenizer = AutoTokenizer.from_pretrained(base)
    vocab = len(tokenizer) + len(prompt.REWARD_TOKENS)
    hidden, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    adapter = {}
    for layer in range(layers):
        for name, out in (("q_proj", hidden), ("k_proj", kv), ("v_proj", kv), ("o_proj", hidden)):
            key = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            adapter[f"{key}.lora_A.weight"] = torch.randn(lora_r, hidden) * 0.01
            adapter[f"{key}.lora_B.weight"] = torch.randn(out, lora_r) * 0.01
    step = directory / "checkpoint-1"
    step.mkdir(parents=True, exist_ok=True)
    save_file(adapter, str(step / "adapter_model.safetensors"))
    torch.save(
        {
            "base_model.model.model.embed_tokens.weight": torch.randn(vocab, hidden) * 0.02,
            "base_model.model.rm_head.weight": torch.randn(3, hidden) * 0.02,
        },
        step / "non_lora_state_dict.pth",
    )
    (directory / "model_config.json").write_text(
        json.dumps(
            {
                "data_config": {
                    "max_frame_pixels": 448 * 448,
                    "num_frames": None,
                    "fps": 2.0,
                    "eval_dim": ["VQ", "MQ", "TA"],
                    "prompt_template_type": "detailed_special",
                    "sample_type": "uniform",
                },
                "model_config": {
                    "model_name_or_path": BASE_ID,
                    "output_dim": 3,
                    "use_special_tokens": True,
                    "reward_token": "special",
                    "torch_dtype": "bfloat16",
                },
                "peft_lora_config": {
                    "lora_enable": True,
                    "vision_lora": False,
                    "lora_r": lora_r,
                    "lora_alpha": 2 * lora_r,
                    "use_rslora": False,
                },
                "inference_config": {
                    "VQ_mean": 0.0,
                    "VQ_std": 1.0,
                    "MQ_mean": 0.0,
                    "MQ_std": 1.0,
                    "TA_mean": 0.0,
                    "TA_std": 1.0,
                },
            },
            indent=2,
        )
    )
    return directory


def clip_vit_l14(
    directory: Path, shrink: dict | None = None, seed: int = 2, dtype: torch.dtype = torch.bfloat16
) -> Path:
    """CLIP ViT-L/14's architecture with random weights (``shrink`` as for ``qwen2vl_2b``)."""
    from transformers import CLIPModel

    tokenizer = _bpe(
        ["<|startoftext|>", "<|endoftext|>"],
        _corpus(),
        1000,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    config = clip_vit_l14_config((tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id), shrink)
    return _save(CLIPModel, config, tokenizer, Path(directory), seed, dtype)


def clip_vit_l14_config(bos_eos_pad: tuple[int, int, int] = (49406, 49407, 49407), shrink: dict | None = None):
    """The CLIPConfig (special-token ids given, else CLIP's own)."""
    from transformers import CLIPConfig

    shrink = shrink or {}
    bos, eos, pad = bos_eos_pad
    text = CLIP_L14_TEXT | {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad} | shrink.get("text", {})
    return CLIPConfig(
        text_config=text,
        vision_config=CLIP_L14_VISION | shrink.get("vision", {}),
        projection_dim=shrink.get("projection_dim", CLIP_L14_PROJECTION),
    )


def build_all(root: Path, shrink: bool = False) -> dict[str, Path]:
    """Everything the GPU benchmark loads: {"base", "videoalign", "clip-segmental"} -> directory."""
    root = Path(root)
    small_qwen = {
        "text": dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
        ),
        "vision": dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2),
    }
    small_clip = {
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28),
        "projection_dim": 16,
    }
    base = qwen2vl_2b(root / "Qwen2-VL-2B-Instruct", small_qwen if shrink else None)
    return {
        "base": base,
        "videoalign": videoreward(root / "VideoReward", base, lora_r=4 if shrink else 16),
        "clip-segmental": clip_vit_l14(root / "clip-vit-large-patch14", small_clip if shrink else None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--shrink", action="store_true", help="tiny widths and depths, same layouts (for tests)")
    args = parser.parse_args()
    for name, path in build_all(args.root, args.shrink).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
