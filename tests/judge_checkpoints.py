"""A tiny judge checkpoint: a Hugging Face Qwen2-VL directory (random weights) whose tokenizer
knows the judges' prompts, has "Yes", "No" and the digits as single tokens, and carries a
Qwen2-VL chat template with system messages, images and videos. Built by the tests; no downloads.
``taught`` fine-tunes one until it answers a given request with a given text (a judge's format).
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.judges import unifiedreward, videoscore2, yesno
from models.random_checkpoints import QWEN_SPECIAL, bpe_tokenizer
from tests.tiny_checkpoints import _save

# Qwen2-VL-Instruct's chat template (add_vision_id off): a default system turn, image and video pads.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen2vl_judge(directory: Path, seed: int = 5, arch: str = "qwen2_vl") -> Path:
    """Tiny Qwen2-VL, or Qwen2.5-VL with ``arch="qwen2_5_vl"`` (hidden 32, 1 text layer, 1-2 vision
    blocks; Qwen2.5-VL's with window attention in one and full attention in the other), vocabulary 700."""
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    corpus = [
        videoscore2.PROMPT_TEMPLATE,
        unifiedreward.POINTWISE_TEMPLATE,
        unifiedreward.PAIRWISE_TEMPLATE,
        yesno.COSMOS_SYSTEM_PROMPT,
        yesno.COSMOS_QUESTION,
        "visual quality: 4; text-to-video alignment: 3, physical/common-sense consistency: 5",
        "Alignment Score (1-5): 3.5 Physics Score (1-5): 2 Style Score (1-5): 4",
    ] + ["Yes No Yes No"] * 50
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe_tokenizer(QWEN_SPECIAL, corpus, 700),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    for word in ("Yes", "No", "1", "2", "3", "4", "5"):
        assert len(fast.encode(word, add_special_tokens=False)) == 1, f"{word!r} is not one token"
    ids = {t: fast.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    if arch == "qwen2_5_vl":
        config_class, model_class = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
            window_size=56,
            out_hidden_size=32,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
            initializer_range=0.3,
        )
    else:
        config_class, model_class = Qwen2VLConfig, Qwen2VLForConditionalGeneration
        vision = dict(
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
        )
    config = config_class(
        text_config=dict(
            vocab_size=len(fast),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=8192,
            initializer_range=0.3,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return _save(model_class, config, fast, directory, seed)


def taught(directory: Path, source: Path, request, answer: str, max_steps: int = 300) -> Path:
    """``source`` fine-tuned until its greedy answer to ``request`` (a ``ChatRequest``) is exactly
    ``answer``, saved to ``directory``. A random model writes noise, so this is how the tests get
    a real model that writes a judge's format (for one known input) and reach the success paths."""
    from models.judges.transformers_runner import TransformersRunner

    runner = TransformersRunner.load(source)
    model, tokenizer = runner.model, runner.tokenizer
    inputs = runner._inputs(request)
    target = torch.tensor(tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id])
    start = inputs["input_ids"].shape[1]
    ids = torch.cat([inputs["input_ids"], target[None]], 1)
    types = torch.cat([inputs["mm_token_type_ids"], torch.zeros((1, len(target)), dtype=torch.int)], 1)
    batch = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types}
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(max_steps):
        logits = model(**batch).logits[0, start - 1 : -1]
        margin = logits.gather(1, target[:, None]) - logits.scatter(1, target[:, None], -1e9).amax(1, keepdim=True)
        if margin.min() > 2.0:  # every answer token wins greedy decoding by a clear margin
            break
        loss = torch.nn.functional.cross_entropy(logits, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    said = runner.generate_sync(request).text
    if said != answer:
        raise RuntimeError(f"the tiny judge did not learn its answer: {said!r}")
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
