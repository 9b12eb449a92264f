"""The compile paths that run here: the tensorrt repository generator, `vrs compile` without
TensorRT, and VRS_COMPILE=inductor on CPU against eager.

TensorRT itself cannot be installed on these machines (no GPU, NVIDIA's index unreachable): the
engine build is tested up to the point where it needs TensorRT, and `vrs compile engine` must
then stop with status 2 naming what is missing.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from vrs_client.videos import video_ref

from models import contract, profiles
from models import signal as signal_model
from models.registry import builtin_models, load_model
from models.spec import FrameSampling, ModelSpec, Resolution
from models.triton_repo import TritonOptions, tensorrt_configs, tensorrt_profiles, write_tensorrt_repo
from service.api import create_app
from service.backends.base import FrameBatch
from service.backends.triton import Wire, input_arrays, to_inputs
from service.errors import Unprocessable
from service.preprocess import target_size
from tests import videos
from tests.conftest import start_server, test_settings
from tests.tiny_checkpoints import BASE_ID

ROOT = Path(__file__).parents[1]
SIGNAL = builtin_models()["signal"]
PB_TYPES = {"UINT8": "TYPE_UINT8", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "FP32": "TYPE_FP32"}


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def allowed_sides(spec: ModelSpec) -> set[tuple[int, int]]:
    """Every (height, width) the spec's resize rule produces, over inputs from 1 px to 8K on each side."""
    sizes = sorted({*range(1, 64), *range(64, 1024, 7), *range(1024, 8192, 61), 8191})
    out = set()
    for h, w in itertools.product(sizes, sizes):
        try:
            out.add(target_size(h, w, spec.resolution))
        except Unprocessable:  # beyond 200:1
            pass
    return out


def covered(profile_list: list[profiles.Profile], shapes: dict[str, tuple[int, ...]]) -> bool:
    return any(all(p[name].covers(shape) for name, shape in shapes.items()) for p in profile_list)


# --- the tensorrt repository -----------------------------------------------------------------


def test_signal_plan_config_follows_the_contract_and_profiles_cover_every_allowed_shape(tmp_path: Path):
    repo = write_tensorrt_repo(tmp_path, {"signal": SIGNAL}, TritonOptions(max_batch_size=4))
    config = parse((repo / "signal" / "config.pbtxt").read_text())
    assert (repo / "signal" / "1").is_dir()
    assert config.platform == "tensorrt_plan" and not config.backend and config.max_batch_size == 4
    wanted = contract.gateway_contract(signal_model.SPEC, "tensorrt")
    assert [(i.name, list(i.dims)) for i in config.input] == [(t.name, list(t.dims)) for t in wanted.inputs]
    assert [i.name for i in config.input] == ["FRAMES", "NUM_FRAMES"]  # no strings in a plan
    assert [model_config_pb2.DataType.Name(i.data_type) for i in config.input] == [
        PB_TYPES[t.dtype] for t in wanted.inputs
    ]
    assert list(config.output[0].dims) == [len(signal_model.SPEC.dimensions)]

    shapes = tensorrt_profiles(SIGNAL, "signal", TritonOptions(max_batch_size=4))
    (group,) = config.instance_group
    assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert list(group.profile) == [str(i) for i in range(len(shapes))]  # an instance may use every profile
    sides = allowed_sides(signal_model.SPEC)
    s = signal_model.SPEC.sampling
    for (h, w), b, t in itertools.product(sides, (1, 4), (s.min_frames, s.max_frames)):
        assert covered(shapes, {"FRAMES": (b, t, h, w, 3), "NUM_FRAMES": (b, 1)}), (b, t, h, w)
    # Not one giant box: no profile admits a frame of the longest side squared.
    longest = max(max(hw) for hw in sides)
    assert not any(p["FRAMES"].covers((1, 1, longest, longest, 3)) for p in shapes)
    assert not covered(shapes, {"FRAMES": (5, 1, 16, 16, 3), "NUM_FRAMES": (5, 1)})  # past the batch limit


def test_vision_profiles_cover_every_patch_grid_videoalign_allows():
    spec = ModelSpec(
        name="videoalign", version="x", dimensions=SIGNAL.spec.dimensions[:4],
        sampling=FrameSampling(mode="fps", fps=2.0, min_frames=4, max_frames=768, multiple_of=2),
        resolution=Resolution(max_pixels=448 * 448, min_pixels=128 * 28 * 28, size_factor=28),
    )  # fmt: skip
    shapes = profiles.part_profiles(spec, "videoalign.vision", 1)
    grids = {(h // 14) * (w // 14) for h, w in allowed_sides(spec)}
    for tokens, frames in itertools.product(grids, (4, 6, 16, 17, 768)):
        groups = -(-frames // 2)
        assert covered(shapes, {"PATCHES": (groups, tokens, 1176), "POSITIONS": (tokens, 2)}), (groups, tokens)


def test_clip_tensorrt_variant_is_an_ensemble_of_steps_and_plans(tiny_dirs, tmp_path: Path):
    clip = load_model("clip-segmental", tiny_dirs["clip"])
    repo = write_tensorrt_repo(
        tmp_path, {"clip-segmental": clip}, TritonOptions(), {"clip-segmental": tiny_dirs["clip"]}
    )
    configs = {p.parent.name: parse(p.read_text()) for p in repo.glob("*/config.pbtxt")}
    assert set(configs) == {
        "clip-segmental",
        "clip-segmental.pre",
        "clip-segmental.image",
        "clip-segmental.text",
        "clip-segmental.post",
    }
    ensemble = configs["clip-segmental"]
    assert ensemble.platform == "ensemble"
    assert [i.name for i in ensemble.input] == [
        "FRAMES",
        "NUM_FRAMES",
        "INPUT_IDS",
        "ATTENTION_MASK",
    ]  # tokens, no PROMPT
    assert [o.name for o in ensemble.output] == ["SCORES"]
    # Every step's inputs exist when it runs (an ensemble input or an earlier step's output), each
    # step's maps name exactly its model's inputs and outputs, and SCORES comes out at the end.
    available = {i.name for i in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        assert set(step.input_map) == {i.name for i in model.input}, step.model_name
        assert set(step.output_map) == {o.name for o in model.output}, step.model_name
        assert set(step.input_map.values()) <= available, step.model_name
        available |= set(step.output_map.values())
    assert "SCORES" in available
    assert (
        configs["clip-segmental.pre"].backend == "python"
        and configs["clip-segmental.pre"].parameters["step"].string_value == "clip-segmental.pre"
    )
    assert (repo / "clip-segmental.post" / "1" / "model.py").is_file()
    image, text = configs["clip-segmental.image"], configs["clip-segmental.text"]
    assert image.platform == text.platform == "tensorrt_plan"
    segments = clip.forward.__self__.config.segments
    assert list(image.input[0].dims) == [segments, 3, 32, 32]  # the tiny CLIP's fixed crops of its segment frames
    assert list(image.output[0].dims) == [segments, clip.forward.__self__.model.config.projection_dim]  # as the engine
    assert [i.name for i in configs["clip-segmental.pre"].input] == ["FRAMES", "NUM_FRAMES"]  # pre picks the frames
    assert list(text.output[0].dims) == [clip.forward.__self__.model.config.projection_dim]
    for name in ("clip-segmental.image", "clip-segmental.text"):
        shapes = tensorrt_profiles(clip, name)
        assert list(configs[name].instance_group[0].profile) == [str(i) for i in range(len(shapes))]
    text_shapes = tensorrt_profiles(clip, "clip-segmental.text")
    for length in range(2, 78):
        assert covered(text_shapes, {"INPUT_IDS": (16, length), "ATTENTION_MASK": (16, length)})

    with pytest.raises(ValueError, match="checkpoint directory"):
        tensorrt_configs(clip)


def test_videoalign_has_no_tensorrt_variant_and_says_why(tiny_dirs):
    model = load_model("videoalign", tiny_dirs["videoalign"], {BASE_ID: tiny_dirs["base"]})
    with pytest.raises(ValueError, match="videoalign.vision.*language model stays in torch.*VRS_COMPILE=inductor"):
        tensorrt_configs(model, model_dir=tiny_dirs["videoalign"])


def test_the_gateway_sends_a_plan_exactly_its_inputs(tiny_dirs, tmp_path: Path):
    """What the Triton client builds for each gateway-facing model equals the generated config's inputs
    (names, order, dtypes, dims after the batch dim); prompts arrive as the checkpoint's token ids."""
    from models.tokens import tokeniser

    clip = load_model("clip-segmental", tiny_dirs["clip"])
    repo = write_tensorrt_repo(
        tmp_path, {"signal": SIGNAL, "clip-segmental": clip}, TritonOptions(), {"clip-segmental": tiny_dirs["clip"]}
    )
    batch = FrameBatch.assemble(
        [videos.moving_scene(5, 64, 96), videos.moving_scene(3, 64, 96)], ["a cat surfing", "a dog"]
    )
    wires = {
        "signal": Wire(contract.gateway_contract(SIGNAL.spec, "tensorrt")),
        "clip-segmental": Wire(
            contract.gateway_contract(clip.spec, "tensorrt"), tokeniser("clip-segmental", tiny_dirs["clip"])
        ),
    }
    for name, wire in wires.items():
        config = parse((repo / name / "config.pbtxt").read_text())
        inputs = to_inputs(batch, wire)
        assert [i.name() for i in inputs] == [i.name for i in config.input]
        for sent, declared in zip(inputs, config.input):
            assert "TYPE_" + sent.datatype() == model_config_pb2.DataType.Name(declared.data_type).replace(
                "STRING", "BYTES"
            )
            assert sent.shape()[0] == 2 and all(d == -1 or d == s for d, s in zip(declared.dims, sent.shape()[1:]))
        assert "PROMPT" not in [i.name() for i in inputs]
    arrays = input_arrays(batch, wires["clip-segmental"])
    expected = clip.forward.__self__.tokenizer(["a cat surfing", "a dog"], padding=True, return_tensors="np")
    np.testing.assert_array_equal(arrays["INPUT_IDS"], expected["input_ids"])
    np.testing.assert_array_equal(arrays["ATTENTION_MASK"], expected["attention_mask"])
    # The python-backend contract still carries the prompt string.
    assert [i.name() for i in to_inputs(batch)] == ["FRAMES", "NUM_FRAMES", "PROMPT"]


# --- the commands ----------------------------------------------------------------------------


def vrs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_vrs_compile_export_then_engine_without_tensorrt_exits_2_naming_it(tmp_path: Path):
    export = vrs("compile", "export", "--models", "signal", "--out", str(tmp_path / "onnx"))
    assert export.returncode == 0, export.stderr[-2000:]
    assert (tmp_path / "onnx" / "signal.onnx").is_file() and (tmp_path / "onnx" / "manifest.json").is_file()
    engine = vrs("compile", "engine", "--onnx", str(tmp_path / "onnx"), "--repo", str(tmp_path / "repo"))
    assert engine.returncode == 2, engine.stderr
    assert "TensorRT's Python API is not installed" in engine.stderr and "import tensorrt" in engine.stderr
    assert not (tmp_path / "repo" / "signal" / "1" / "model.plan").exists()


def test_engine_cache_reuses_a_plan_only_for_the_same_graph_precision_tensorrt_and_gpu(tmp_path: Path):
    """build_all with an engine cache. TensorRT cannot exist here, so the toolchain is a stand-in
    that records each build and writes a recognisable plan; the cache logic around it is the real one."""
    from models import export
    from models.tensorrt_build import Toolchain, build_all

    export.export(SIGNAL, tmp_path / "onnx")
    builds: list[tuple[str, str]] = []

    def toolchain(target: str) -> Toolchain:
        def build(onnx_path, plan_path, part_profiles, precision, timing_cache):
            builds.append((target, precision))
            assert timing_cache == tmp_path / "cache" / timing_cache.name  # the timing cache lives in the cache
            plan_path.parent.mkdir(parents=True, exist_ok=True)
            plan_path.write_bytes(f"plan of {onnx_path.name} for {target}, {precision}".encode())

        return Toolchain(target, build)

    h100, h200 = toolchain("TensorRT 10.8 on NVIDIA H100 sm_90"), toolchain("TensorRT 10.8 on NVIDIA H200 sm_90")

    def run(repo: str, chain: Toolchain = h100, precision: str = "fp16"):
        (built,) = build_all(tmp_path / "onnx", tmp_path / repo, precision=precision, cache=tmp_path / "cache",
                             toolchain=chain)  # fmt: skip
        return built.cached, built.plan.read_bytes().decode()

    assert run("first") == (False, "plan of signal.onnx for TensorRT 10.8 on NVIDIA H100 sm_90, fp16")
    assert run("restart") == (True, "plan of signal.onnx for TensorRT 10.8 on NVIDIA H100 sm_90, fp16")
    assert run("other-gpu", h200) == (False, "plan of signal.onnx for TensorRT 10.8 on NVIDIA H200 sm_90, fp16")
    assert run("bf16", precision="bf16")[0] is False
    assert run("bf16-again", precision="bf16")[0] is True
    onnx = tmp_path / "onnx" / "signal.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")  # another graph (a new checkpoint or exporter)
    assert run("new-graph")[0] is False
    assert len(builds) == 4 and len(list((tmp_path / "cache" / "signal").glob("*.plan"))) == 4
    assert not list((tmp_path / "cache").rglob(".*"))  # no half-written files left


def test_vrs_triton_writes_the_variant_vrs_compile_implies(tmp_path: Path, monkeypatch):
    """Triton and the gateway read the same settings: VRS_COMPILE=tensorrt -> the plan repository."""
    monkeypatch.setenv("VRS_COMPILE", "tensorrt")
    done = vrs("triton", "--write-only", "--repo", str(tmp_path / "repo"), "--models", "signal")
    assert done.returncode == 0, done.stderr[-2000:]
    assert parse((tmp_path / "repo" / "signal" / "config.pbtxt").read_text()).platform == "tensorrt_plan"


def test_vrs_triton_tensorrt_variant_refuses_videoalign_naming_why(tiny_dirs, tmp_path: Path):
    result = vrs(
        "triton", "--variant", "tensorrt", "--repo", str(tmp_path / "repo"), "--models", "videoalign",
        "--model-dir", f"videoalign={tiny_dirs['videoalign']}", "--base-model-dir", f"{BASE_ID}={tiny_dirs['base']}",
    )  # fmt: skip
    assert result.returncode != 0 and "language model stays in torch" in result.stderr, result.stderr[-2000:]


def test_vrs_triton_tensorrt_variant_says_what_it_lacks_before_starting_a_server(tmp_path: Path):
    """Serving plans needs them built and a Triton with the TensorRT backend: without plans the
    command names each missing file and the build commands; with them (here an empty file, only to
    pass the first check) it says the bundled tritonserver has no TensorRT backend. No server starts."""
    repo = tmp_path / "repo"
    args = ("triton", "--variant", "tensorrt", "--repo", str(repo), "--models", "signal", "--grpc-port", "1")
    unbuilt = vrs(*args)
    assert unbuilt.returncode == 1, unbuilt.stderr[-2000:]
    assert f"no engine built yet for {repo / 'signal' / '1' / 'model.plan'}" in unbuilt.stderr
    assert "vrs compile engine --onnx ONNX_DIR" in unbuilt.stderr and "Traceback" not in unbuilt.stderr
    (repo / "signal" / "1" / "model.plan").write_bytes(b"")
    built = vrs(*args)
    assert built.returncode == 1 and "has no TensorRT backend (it has: python)" in built.stderr, built.stderr[-2000:]
    assert f"tritonserver --model-repository={repo}" in built.stderr


# --- VRS_COMPILE=inductor on CPU ---------------------------------------------------------------


async def test_inductor_gateway_scores_equal_eager():
    """Signal through two in-process gateways, eager and VRS_COMPILE=inductor (batch limit 2 keeps the
    CPU compile short): equal scores within 1e-5 (Inductor fuses and reorders float32 reductions)."""
    items = [{"video": video_ref(videos.unique_clip(9, 64, 96), fps=16)} for _ in range(3)]
    items.append({"video": video_ref(videos.unique_clip(5, 48, 48), fps=16)})
    eager = start_server(create_app(test_settings(max_batch_size=2)))
    # Start-up compiles and warms up batch sizes 1 and 2 (a minute or two on a shared CPU): a safety net, not a speed check.
    compiled = start_server(create_app(test_settings(max_batch_size=2, compile="inductor")), start_timeout_s=900)
    try:
        backend = compiled.app.state.engine.backend
        assert backend._models["signal"].forward is not signal_model.forward  # the compiled one serves
        async with httpx.AsyncClient(timeout=600) as client:
            answers = [await client.post(f"{s.url}/v1/score", json={"items": items}) for s in (eager, compiled)]
    finally:
        eager.stop()
        compiled.stop()
    for answer in answers:
        assert answer.status_code == 200, answer.text
    got = [
        [[r["scores"][f"signal.{d}"] for d in signal_model.SPEC.dimension_names] for r in a.json()["results"]]
        for a in answers
    ]
    np.testing.assert_allclose(got[1], got[0], atol=1e-5, rtol=0)


def test_tensorrt_compile_is_refused_in_process():
    with pytest.raises(ValueError, match="VRS_BACKEND=triton"):
        create_app(test_settings(compile="tensorrt"))


@pytest.mark.parametrize("name", ["clip-segmental", "videoalign"])
def test_inductor_compiles_only_the_core_of_a_staged_model(tiny_dirs, name):
    """A staged model (pre: tokenisation; core: the towers) under VRS_COMPILE=inductor on CPU: ``pre``
    stays the eager function, ``core`` is compiled and warmed up over two batch sizes and a second
    frame size, and its scores on a third size equal eager within 1e-4 (Inductor reorders float32
    reductions; scores are O(1))."""
    from models.compile import compiled, warm_up

    if name == "clip-segmental":
        eager = load_model(name, tiny_dirs["clip"])
    else:
        eager = load_model(name, tiny_dirs["videoalign"], {BASE_ID: tiny_dirs["base"]})
    fast = compiled(eager)
    assert fast.stages is not None and fast.stages.pre is eager.stages.pre
    assert fast.stages.core is not eager.stages.core
    assert warm_up(fast, [1, 2]) == [1, 2]
    clips = [videos.moving_scene(16, 56, 84, speed=s) for s in (1.0, 3.0)]
    batch = FrameBatch.assemble(clips, ["a cat surfing a wave", "a red car"])
    with torch.inference_mode():
        want = eager.forward(batch.frames, batch.num_frames, batch.prompts)
        got = fast.forward(batch.frames, batch.num_frames, batch.prompts)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4, rtol=0)
    # New prompts (every batch of a trainer has them) reuse the compiled graphs: nothing is traced
    # again (clip-segmental's prompt cache once guarded on the prompt strings: a graph per batch).
    with torch.inference_mode():  # (the first batch with new prompts at this batch size may trace once)
        fast.forward(batch.frames, batch.num_frames, ["a new prompt", "and another"])
    traced = torch._dynamo.utils.counters["stats"]["calls_captured"]
    for i in range(3):
        with torch.inference_mode():
            fast.forward(batch.frames, batch.num_frames, [f"prompt {i}", f"another {i}"])
    assert torch._dynamo.utils.counters["stats"]["calls_captured"] == traced
