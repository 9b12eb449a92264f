"""The Triton python-backend model: runs a model's own forward on the requests Triton batched.

Imported by the generated ``model.py`` inside Triton's python stub process, where
``triton_python_backend_utils`` exists. config.pbtxt names the forward to run, so Triton and the
in-process backend share it: ``parameters.forward = "module:function"`` is imported;
``parameters.model_name`` + ``model_dir`` (+ ``base_model_dirs``, JSON) are loaded with
``models.registry.load_model``, the loader the gateway uses for ``VRS_MODEL_DIRS``.
"""

from __future__ import annotations

import importlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # only inside Triton's python stub

from models import contract


def load_forward(path: str):
    """Import ``module:function``."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def configured_forward(parameters: dict[str, str]):
    """The forward config.pbtxt's parameters name: a checkpoint loaded by the registry, or an import.
    A checkpoint must still be the version the config was generated for (its dimensions and
    frame policy are in the config and in the gateway's spec); a bad directory raises
    ModelLoadError naming the path, and Triton reports the model as failed to load."""
    if "model_dir" not in parameters:
        return load_forward(parameters["forward"])
    from models.registry import ModelLoadError, load_model

    bases = {name: Path(path) for name, path in json.loads(parameters.get("base_model_dirs", "{}")).items()}
    model = load_model(parameters["model_name"], Path(parameters["model_dir"]), bases)
    expected = parameters.get("spec_version")
    if expected is not None and model.spec.version != expected:
        raise ModelLoadError(
            f"{parameters['model_name']}: {parameters['model_dir']} now holds version {model.spec.version}, "
            f"the repository was generated for {expected} (regenerate it)"
        )
    return model.forward


class TritonPythonModel:
    """One Triton model instance. ``execute`` gets every request the dynamic batcher gathered."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        if "step" in parameters:  # a pre/post step of a compiled model's ensemble (models/triton_steps.py)
            from models.triton_steps import load_step

            self.step = load_step(parameters)
            self.execute = self._execute_step
            return
        self.forward = configured_forward(parameters)
        if parameters.get("compile", "none") == "inductor":  # VRS_COMPILE, warmed up before Triton says ready
            from models.compile import compiled, warm_up
            from models.registry import RewardModel

            device = "cuda" if torch.cuda.is_available() else "cpu"
            model = compiled(RewardModel(spec=_spec_stub(config), forward=self.forward), device)
            warm_up(model)
            self.forward = model.forward

    def _execute_step(self, requests: list) -> list:
        """One step per request: read the step's inputs by name, answer its outputs."""
        responses = []
        for request in requests:
            inputs = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.step.inputs}
            outputs = self.step(inputs)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()]))
        return responses

    def execute(self, requests: list) -> list:
        """Requests of equal frame size run as one padded forward; each gets its own rows back."""
        inputs = [_read(request) for request in requests]
        scores: list[np.ndarray | None] = [None] * len(requests)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (frames, _, _) in enumerate(inputs):
            groups[frames.shape[2:4]].append(i)
        for members in groups.values():
            longest = max(inputs[i][0].shape[1] for i in members)
            frames = np.concatenate([_pad_t(inputs[i][0], longest) for i in members])
            counts = np.concatenate([inputs[i][1] for i in members])
            prompts = [p for i in members for p in inputs[i][2]]
            with torch.inference_mode():
                out = self.forward(torch.from_numpy(frames), torch.from_numpy(counts), prompts)
            out = out.detach().cpu().numpy().astype(np.float32, copy=False)
            start = 0
            for i in members:
                size = len(inputs[i][1])
                scores[i] = out[start : start + size]
                start += size
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(contract.SCORES, s)]) for s in scores]


def _read(request) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """FRAMES uint8 [B,T,H,W,3], NUM_FRAMES int32 [B], prompts [B] of one request."""
    frames = pb_utils.get_input_tensor_by_name(request, contract.FRAMES).as_numpy()
    counts = pb_utils.get_input_tensor_by_name(request, contract.NUM_FRAMES).as_numpy().reshape(-1).astype(np.int32)
    prompt = pb_utils.get_input_tensor_by_name(request, contract.PROMPT)
    raw = prompt.as_numpy().reshape(-1) if prompt is not None else [b""] * len(frames)
    prompts = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in raw]
    return frames, counts, prompts


def _pad_t(frames: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad [B,T,H,W,3] along T to ``length`` (counts keep the real lengths)."""
    if frames.shape[1] == length:
        return frames
    pad = np.zeros((frames.shape[0], length - frames.shape[1], *frames.shape[2:]), dtype=frames.dtype)
    return np.concatenate([frames, pad], axis=1)


def _spec_stub(config: dict):
    """The spec fields warm-up needs (frame policy, batch limit), rebuilt from config.pbtxt's parameters."""
    from models.spec import ModelSpec

    spec = ModelSpec.model_validate_json(config["parameters"]["spec_json"]["string_value"])
    return spec.model_copy(update={"batching": spec.batching.model_copy(update={"max_batch_size": config["max_batch_size"]})})
