"""The Triton python-backend model: runs a model's own forward on the requests Triton batched.

Imported by the generated ``model.py`` inside Triton's python stub process, where
``triton_python_backend_utils`` exists. config.pbtxt names the forward to run, so Triton and the
in-process backend share it: ``parameters.forward = "module:function"`` is imported;
``parameters.model_name`` + ``model_dir`` (+ ``base_model_dirs``, JSON) are loaded with
``models.registry.load_model``, the loader the gateway uses for ``VRS_MODEL_DIRS``, onto the
placement ``parameters.device`` / ``parameters.dtype`` name (models/placement.py). Requests are
assembled into batches by the gateway's own ``FrameBatch.assemble``, on that device.
"""

from __future__ import annotations

import importlib
import json
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
    return configured_model(parameters)[0]


def configured_model(parameters: dict[str, str]):
    """The forward config.pbtxt's parameters name: a checkpoint loaded by the registry, or an import.
    A checkpoint must still be the version the config was generated for (its dimensions and
    frame policy are in the config and in the gateway's spec); a bad directory raises
    ModelLoadError naming the path, and Triton reports the model as failed to load.
    Returns (forward, device to assemble batches on)."""
    from models.placement import resolve

    placement = resolve(parameters.get("device", "cpu"), parameters.get("dtype", "auto"))
    if "model_dir" not in parameters:
        return load_forward(parameters["forward"]), placement.device
    from models.registry import ModelLoadError, load_model

    bases = {name: Path(path) for name, path in json.loads(parameters.get("base_model_dirs", "{}")).items()}
    model = load_model(parameters["model_name"], Path(parameters["model_dir"]), bases, placement)
    expected = parameters.get("spec_version")
    if expected is not None and model.spec.version != expected:
        raise ModelLoadError(
            f"{parameters['model_name']}: {parameters['model_dir']} now holds version {model.spec.version}, "
            f"the repository was generated for {expected} (regenerate it)"
        )
    return model.forward, placement.device


class TritonPythonModel:
    """One Triton model instance. ``execute`` gets every request the dynamic batcher gathered."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        if "step" in parameters:  # a pre/post step of a compiled model's ensemble (models/triton_steps.py)
            from models.triton_steps import load_step

            self.step = load_step(parameters)
            self.execute = self._execute_step  # type: ignore[method-assign]  # this instance runs a step
            return
        if args.get("model_instance_kind") == "GPU":  # KIND_GPU: Triton picks the GPU of this instance
            parameters["device"] = f"cuda:{args['model_instance_device_id']}"
        self.forward, self.device = configured_model(parameters)
        if parameters.get("compile", "none") == "inductor":  # VRS_COMPILE, warmed up before Triton says ready
            from models.compile import compiled, warm_up
            from models.registry import RewardModel

            model = compiled(RewardModel(spec=_spec_stub(config), forward=self.forward), self.device)
            warm_up(model, device=self.device)
            self.forward = model.forward

    def _execute_step(self, requests: list) -> list:
        """One step per request: read the step's inputs by name, answer its outputs."""
        responses = []
        for request in requests:
            inputs = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.step.inputs}
            outputs = self.step(inputs)
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()])
            )
        return responses

    def execute(self, requests: list) -> list:
        """Clips of equal frame size, over all the requests, run as one padded forward (``FrameBatch.by_size``,
        the gateway's own batching); each request gets its own rows back."""
        from service.backends.base import FrameBatch

        inputs = [_read(request) for request in requests]
        owner = [r for r, (_, counts, _) in enumerate(inputs) for _ in counts]  # request of each clip
        clips = [torch.from_numpy(frames[b, :n]) for frames, counts, _ in inputs for b, n in enumerate(counts)]
        prompts = [p for _, _, request_prompts in inputs for p in request_prompts]
        rows: list[np.ndarray | None] = [None] * len(clips)
        for members, batch in FrameBatch.by_size(clips, prompts, self.device):
            with torch.inference_mode():
                out = self.forward(batch.frames, batch.num_frames, batch.prompts)
            for row, i in zip(out.detach().float().cpu().numpy(), members):
                rows[i] = row
        scores = [np.stack([rows[i] for i in range(len(clips)) if owner[i] == r]) for r in range(len(requests))]  # type: ignore[misc]  # every row is set above
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(contract.SCORES, s)]) for s in scores]


def _read(request) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """FRAMES uint8 [B,T,H,W,3], NUM_FRAMES int32 [B], prompts [B] of one request."""
    frames = pb_utils.get_input_tensor_by_name(request, contract.FRAMES).as_numpy()
    counts = pb_utils.get_input_tensor_by_name(request, contract.NUM_FRAMES).as_numpy().reshape(-1).astype(np.int32)
    prompt = pb_utils.get_input_tensor_by_name(request, contract.PROMPT)
    raw = prompt.as_numpy().reshape(-1) if prompt is not None else [b""] * len(frames)
    prompts = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in raw]
    return frames, counts, prompts


def _spec_stub(config: dict):
    """The spec fields warm-up needs (frame policy, batch limit), rebuilt from config.pbtxt's parameters."""
    from models.spec import ModelSpec

    spec = ModelSpec.model_validate_json(config["parameters"]["spec_json"]["string_value"])
    return spec.model_copy(
        update={"batching": spec.batching.model_copy(update={"max_batch_size": config["max_batch_size"]})}
    )
