"""In-process judge runner: a Qwen2-VL / Qwen2.5-VL checkpoint under transformers' ``generate``.

For small judges and tests. It turns a ``ChatRequest`` into the model's chat text (the
tokenizer's chat template, one ``<|image_pad|>`` / ``<|video_pad|>`` per visual part, expanded
to the number of merged patches), the frames into Qwen2-VL patches (``video_patches``: an image
is a one-frame video, repeated to the temporal patch as Qwen2-VL's image processor does), and
generates. With ``top_logprobs = k > 0`` each generated token carries its log-probability and
the k most likely alternatives, from the raw logits (``output_logits``) log-softmaxed over the
vocabulary, as vLLM reports them. Temperature 0 is greedy decoding.

Generation is CPU/GPU-bound: it runs in a worker thread, one request at a time per runner.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from models.judges.runner import ChatRequest
from models.judges.spec import Generation, TokenLogprob
from models.videoalign.model import video_patches

if TYPE_CHECKING:
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"


class TransformersRunner:
    def __init__(
        self,
        model: Qwen2VLForConditionalGeneration | Qwen2_5_VLForConditionalGeneration,
        tokenizer,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        vision = model.config.vision_config
        self.patch: int = vision.patch_size  # type: ignore[union-attr]  # transformers types a sub-config dict | config | None; a config once loaded
        self.merge: int = vision.spatial_merge_size  # type: ignore[union-attr]  # as above
        self.temporal: int = vision.temporal_patch_size  # type: ignore[union-attr]  # as above
        self._lock = threading.Lock()

    @classmethod
    def load(cls, directory: Path, dtype: torch.dtype = torch.float32, device: str = "cpu") -> TransformersRunner:
        """A Hugging Face Qwen2-VL / Qwen2.5-VL directory (config, safetensors, tokenizer with chat template)."""
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForImageTextToText.from_pretrained(directory, dtype=dtype).to(device).eval()  # type: ignore[arg-type]  # transformers' @wraps(Module.to) hides that `to` is a method
        return cls(model, tokenizer)

    async def generate(self, request: ChatRequest) -> Generation:
        return await asyncio.to_thread(self.generate_sync, request)

    def generate_sync(self, request: ChatRequest) -> Generation:
        with self._lock, torch.inference_mode():
            return self._generate(request)

    # ---- internals ----

    def _snap(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [n, H, W, 3] -> tensor with sides multiples of patch * merge (bicubic, antialiased)."""
        x = torch.from_numpy(np.array(frames, dtype=np.uint8))  # a writable copy
        f = self.patch * self.merge
        h, w = x.shape[1:3]
        th, tw = max(f, round(h / f) * f), max(f, round(w / f) * f)
        if (th, tw) == (h, w):
            return x
        y = F.interpolate(
            x.permute(0, 3, 1, 2).float(), size=(th, tw), mode="bicubic", align_corners=False, antialias=True
        )
        return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def _visual(self, frames: np.ndarray) -> tuple[torch.Tensor, tuple[int, int, int]]:
        return video_patches(self._snap(frames), patch=self.patch, temporal=self.temporal, merge=self.merge)

    def _inputs(self, request: ChatRequest) -> dict:
        content = [{"type": "image"} for _ in request.images]
        if request.video is not None:
            content.append({"type": "video"})
        content.append({"type": "text", "text": request.text})
        messages: list[dict] = [{"role": "system", "content": request.system}] if request.system is not None else []
        messages.append({"role": "user", "content": content})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

        device = self.model.device
        dtype = next(self.model.parameters()).dtype
        inputs: dict = {}
        per_merge = self.merge**2
        if request.images:
            visual = [self._visual(image[None]) for image in request.images]
            pieces = text.split(IMAGE_PAD)
            if len(pieces) != len(visual) + 1:
                raise ValueError(f"chat template produced {len(pieces) - 1} image pads for {len(visual)} images")
            text = pieces[0] + "".join(
                IMAGE_PAD * (t * h * w // per_merge) + rest for (_, (t, h, w)), rest in zip(visual, pieces[1:])
            )
            inputs["pixel_values"] = torch.cat([p for p, _ in visual]).to(device, dtype)
            inputs["image_grid_thw"] = torch.tensor([g for _, g in visual], device=device)
        if request.video is not None:
            patches, (t, h, w) = self._visual(request.video)
            if text.count(VIDEO_PAD) != 1:
                raise ValueError(f"chat template produced {text.count(VIDEO_PAD)} video pads for one video")
            text = text.replace(VIDEO_PAD, VIDEO_PAD * (t * h * w // per_merge))
            inputs["pixel_values_videos"] = patches.to(device, dtype)
            inputs["video_grid_thw"] = torch.tensor([(t, h, w)], device=device)
            if self.model.config.model_type == "qwen2_5_vl" and request.video_fps:
                inputs["second_per_grid_ts"] = torch.tensor([self.temporal / request.video_fps], device=device)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        input_ids = ids["input_ids"].to(device)
        inputs["input_ids"] = input_ids
        inputs["attention_mask"] = ids["attention_mask"].to(device)
        # Modality per position (0 text, 1 image, 2 video): without it transformers silently gives the
        # visual tokens text positions instead of Qwen2-VL's 3D (M-RoPE) ones.
        config = self.model.config
        inputs["mm_token_type_ids"] = (input_ids == config.image_token_id).int() + 2 * (
            input_ids == config.video_token_id
        ).int()
        return inputs

    def _generate(self, request: ChatRequest) -> Generation:
        params = request.params
        inputs = self._inputs(request)
        sampling = (
            {"do_sample": True, "temperature": params.temperature} if params.temperature > 0 else {"do_sample": False}
        )
        out = self.model.generate(
            **inputs,
            max_new_tokens=params.max_tokens,
            output_logits=params.wants_logprobs,
            return_dict_in_generate=True,
            pad_token_id=self.tokenizer.pad_token_id,
            top_p=None,
            top_k=None,
            **sampling,
        )
        new = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        special = set(self.tokenizer.all_special_ids)
        while new and new[-1] in special:  # the stop token is not part of the answer
            new.pop()
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        if not params.wants_logprobs:
            return Generation(text=text)
        tokens = []
        for step, token_id in enumerate(new):
            logprobs = torch.log_softmax(out.logits[step][0].float(), dim=-1)
            values, ids = logprobs.topk(min(params.top_logprobs, logprobs.numel()))
            top: dict[str, float] = {}
            for v, i in zip(values.tolist(), ids.tolist()):
                top.setdefault(self.tokenizer.decode([i]), v)
            piece = self.tokenizer.decode([token_id])
            chosen = float(logprobs[token_id])
            top.setdefault(piece, chosen)
            tokens.append(TokenLogprob(token=piece, logprob=chosen, top=top))
        return Generation(text=text, tokens=tuple(tokens))
