"""Prompt tokenisation for compiled variants: TensorRT plans take no strings, so the gateway
turns prompts into ``INPUT_IDS`` / ``ATTENTION_MASK`` (int64 [B, L], right-padded to the batch's
longest, truncated to the text tower's positions) with the checkpoint's own tokenizer, exactly
as the torch forward tokenises them (models/clip_segmental/model.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

Tokenise = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


def _clip(directory: Path) -> Tokenise:
    from transformers import AutoTokenizer, CLIPConfig

    tokenizer = AutoTokenizer.from_pretrained(directory)
    limit = CLIPConfig.from_pretrained(directory).text_config.max_position_embeddings  # type: ignore[union-attr]  # transformers types a sub-config dict | config | None; a config once loaded

    def tokenise(prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        out = tokenizer(list(prompts), padding=True, truncation=True, max_length=limit, return_tensors="np")
        return out["input_ids"].astype(np.int64), out["attention_mask"].astype(np.int64)

    return tokenise


TOKENISERS: dict[str, Callable[[Path], Tokenise]] = {"clip-segmental": _clip}


def tokeniser(name: str, directory: Path) -> Tokenise:
    """The tokeniser of model ``name`` loaded from its checkpoint directory (tokenizer files only)."""
    if name not in TOKENISERS:
        raise ValueError(f"{name}: no compiled variant takes its prompts as tokens (known: {', '.join(TOKENISERS)})")
    return TOKENISERS[name](Path(directory))
