"""The Triton backend against a real Triton server (the tritonserver bundled in nvidia-pytriton).

A session fixture generates the model repository (``signal`` and the tiny ``videoalign`` and
``clip-segmental`` checkpoints, which Triton's python stubs load from disk), starts tritonserver
on free ports and stops it (and its python stubs) afterwards. Gateways run under real uvicorn.
Triton's own statistics API is the witness for what reached Triton and how it batched.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from vrs_client.videos import video_ref

from models import signal as signal_model
from models.registry import ModelLoadError, RewardModel, builtin_models, load_model, load_models, load_spec
from models.triton_repo import (
    TritonOptions,
    forward_path,
    python_config,
    warmup_shape,
    write_python_repo,
)
from service import triton_command
from service.api import create_app
from service.decode import Limits, sample_frames
from service.ingest import EncodedVideo
from service.triton_server import LocalTriton
from tests import videos
from tests.conftest import RunningServer, free_port, start_server, test_settings
from tests.test_clip_segmental import _reference as clip_reference
from tests.test_clip_segmental import goal_clip_dir
from tests.test_videoalign import Reference as VideoAlignReference
from tests.tiny_checkpoints import BASE_ID
from tests.videos import unique_clip

SIGNAL = builtin_models()["signal"]
K = len(signal_model.SPEC.dimensions)
# A longer queue delay than the default makes Triton's dynamic batching easy to observe.
TEST_OPTIONS = TritonOptions(max_queue_delay_us=20_000)


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def start_triton(repo: Path, ports: tuple[int, int, int] | None = None) -> LocalTriton:
    grpc_port, http_port, metrics_port = ports or (free_port(), free_port(), free_port())
    return LocalTriton(repo, grpc_port, http_port, metrics_port).start(timeout_s=300)


def stats(server: LocalTriton, model: str = "signal") -> dict[str, int]:
    """Triton's counters for ``model``: requests, failed requests, items (inferences), executions."""
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        (s,) = client.get_inference_statistics(model).model_stats
    return {
        "requests": s.inference_stats.success.count,
        "failed": s.inference_stats.fail.count,
        "inferences": s.inference_count,
        "executions": s.execution_count,
    }


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def counted(server: LocalTriton, before: dict[str, int], key: str, at_least: int, model: str = "signal") -> dict:
    """The change in Triton's counters for ``model`` once ``key`` has grown by ``at_least``: Triton
    updates its statistics just after it answers, so a read right after the last response can lag."""
    deadline = time.monotonic() + 30  # a safety net, not a speed check
    while (change := delta(stats(server, model), before))[key] < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return change


@dataclass(frozen=True)
class Checkpoints:
    """What VRS_MODEL_DIRS and VRS_BASE_MODEL_DIRS hold for the tiny checkpoints."""

    model_dirs: dict[str, Path]
    base_model_dirs: dict[str, Path]


@pytest.fixture(scope="session")
def checkpoints(tiny_dirs, tmp_path_factory) -> Checkpoints:
    """The tiny VideoReward (LoRA layout) and CLIP (4 segments, goal/baseline prompts) on disk."""
    clip = goal_clip_dir(tiny_dirs["clip"], tmp_path_factory.mktemp("triton-clip") / "clip-goal")
    return Checkpoints({"videoalign": tiny_dirs["videoalign"], "clip-segmental": clip}, {BASE_ID: tiny_dirs["base"]})


@pytest.fixture(scope="session")
def triton_repo(tmp_path_factory, checkpoints: Checkpoints) -> Path:
    """signal by its forward's import path; videoalign and clip-segmental by their checkpoint directories."""
    loaded = load_models(list(checkpoints.model_dirs), checkpoints.model_dirs, checkpoints.base_model_dirs)
    return write_python_repo(
        tmp_path_factory.mktemp("triton") / "repo",
        {"signal": SIGNAL} | loaded,
        TEST_OPTIONS,
        checkpoints.model_dirs,
        checkpoints.base_model_dirs,
    )


@pytest.fixture(scope="session")
def triton(triton_repo: Path) -> Iterator[LocalTriton]:
    server = start_triton(triton_repo)
    yield server
    server.stop()


def triton_gateway_app(url: str, **overrides):
    settings = test_settings(backend="triton", triton_url=url, models=["signal"], **overrides)
    return create_app(settings, models=builtin_models())


@pytest.fixture(scope="module")
def triton_gateway(triton: LocalTriton) -> Iterator[RunningServer]:
    running = start_server(triton_gateway_app(triton.grpc_url))
    yield running
    running.stop()


# --- generated configs -------------------------------------------------------------------


def test_python_config_has_batching_queue_policy_instances_warmup_and_the_forward():
    config = parse(python_config(SIGNAL, TritonOptions(max_batch_size=12, max_queue_delay_us=3000, instances=2)))
    assert config.name == "signal" and config.backend == "python"
    assert config.max_batch_size == 12
    inputs = {i.name: i for i in config.input}
    assert list(inputs["FRAMES"].dims) == [-1, -1, -1, 3]
    assert inputs["FRAMES"].data_type == model_config_pb2.TYPE_UINT8
    assert inputs["NUM_FRAMES"].data_type == model_config_pb2.TYPE_INT32 and list(inputs["NUM_FRAMES"].dims) == [1]
    assert inputs["PROMPT"].data_type == model_config_pb2.TYPE_STRING
    (output,) = config.output
    assert output.name == "SCORES" and output.data_type == model_config_pb2.TYPE_FP32 and list(output.dims) == [K]
    batcher = config.dynamic_batching
    assert batcher.max_queue_delay_microseconds == 3000
    policy = batcher.default_queue_policy
    assert policy.max_queue_size == TritonOptions.max_queue_size
    assert policy.default_timeout_microseconds == TritonOptions.queue_timeout_us
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    (group,) = config.instance_group
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert list(config.version_policy.specific.versions) == [1]
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 1 and set(warmup.inputs) == {"FRAMES", "NUM_FRAMES", "PROMPT"}
    assert warmup.inputs["NUM_FRAMES"].input_data_file == "num_frames"
    # The forward Triton runs is importable and is the very function the in-process backend runs.
    path = config.parameters["forward"].string_value
    module, _, name = path.partition(":")
    assert getattr(importlib.import_module(module), name) is signal_model.forward


def test_python_repo_layout(tmp_path: Path):
    repo = write_python_repo(tmp_path, {"signal": SIGNAL}, TritonOptions(version=3, python_paths=("/opt/app",)))
    model_py = (repo / "signal" / "3" / "model.py").read_text()
    assert "from models.triton_python import TritonPythonModel" in model_py
    assert "['/opt/app']" in model_py
    compile(model_py, "model.py", "exec")
    assert np.frombuffer((repo / "signal" / "warmup" / "num_frames").read_bytes(), dtype="<i4").tolist() == [4]
    assert list(parse((repo / "signal" / "config.pbtxt").read_text()).version_policy.specific.versions) == [3]


def _local_forward(frames, num_frames, prompts):
    raise AssertionError("never called")


def test_forward_must_be_importable():
    assert forward_path(SIGNAL) == "models.signal:forward"

    def nested(frames, num_frames, prompts):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="not importable"):
        forward_path(RewardModel(spec=signal_model.SPEC, forward=nested))
    assert (
        forward_path(RewardModel(spec=signal_model.SPEC, forward=_local_forward)) == "tests.test_triton:_local_forward"
    )


# --- through a real Triton ------------------------------------------------------------------


def workload() -> list[dict]:
    """Raw-frame and mp4 items at three rollout shapes, clean and damaged, each unique."""
    items = []
    for i, shape in enumerate([(33, 240, 416), (17, 480, 480), (25, 400, 640), (33, 240, 416)]):
        frames = videos.moving_scene(*shape, speed=1.0 + i)
        if i % 2:
            frames = videos.flicker(frames, 0.1 * i)
        frames = videos.stamp(frames)  # after the damage, which could otherwise erase the mark
        items.append({"video": video_ref(frames, fps=16)})
    items.append({"video": {"data": b64(videos.encode(unique_clip(33, 240, 416)))}})
    return items


async def test_triton_scores_equal_in_process_scores(gateway, triton_gateway, triton):
    """The same requests through the in-process gateway and the Triton gateway: equal float32 scores."""
    many, singles = workload(), workload()
    items = many + singles
    before = stats(triton)
    async with httpx.AsyncClient(timeout=120) as client:
        bodies = [{"items": many, "models": ["signal"]}] + [{"items": [item], "models": ["signal"]} for item in singles]
        for body in bodies:
            local, remote = await asyncio.gather(
                client.post(f"{gateway.url}/v1/score", json=body),
                client.post(f"{triton_gateway.url}/v1/score", json=body),
            )
            assert local.status_code == 200, local.text
            assert remote.status_code == 200, remote.text
            for a, b in zip(local.json()["results"], remote.json()["results"], strict=True):
                names = [f"signal.{d}" for d in signal_model.SPEC.dimension_names]
                np.testing.assert_allclose(
                    [b["scores"][n] for n in names], [a["scores"][n] for n in names], atol=1e-5, rtol=0
                )
                assert b["overall"] == pytest.approx(a["overall"], abs=1e-5)
    assert counted(triton, before, "inferences", len(items))["inferences"] == len(items)  # each item once


async def test_one_triton_request_per_gateway_batch(triton_gateway, triton):
    """Concurrent single-item requests: the gateway batches them and sends one Triton request per batch."""
    batcher = triton_gateway.app.state.engine.batchers["signal"]
    sizes_before = dict(batcher.batch_sizes)
    before = stats(triton)
    clips = [unique_clip(9, 128, 224, speed=1.0 + i % 4) for i in range(24)]
    async with httpx.AsyncClient(base_url=triton_gateway.url, timeout=120) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/score", json={"items": [{"video": video_ref(c, fps=16)}]}) for c in clips)
        )
    assert [r.status_code for r in responses] == [200] * len(clips), [r.text for r in responses if r.status_code != 200]
    for clip, response in zip(clips, responses):
        (result,) = response.json()["results"]
        expected = signal_model.forward(*_as_batch(clip))[0].numpy()
        got = [result["scores"][f"signal.{d}"] for d in signal_model.SPEC.dimension_names]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    batches = {s: n - sizes_before.get(s, 0) for s, n in batcher.batch_sizes.items() if n > sizes_before.get(s, 0)}
    change = counted(triton, before, "inferences", len(clips))
    assert change["inferences"] == len(clips)
    assert change["requests"] == sum(batches.values()), (change, batches)  # one request per batch, not per item
    assert max(batches) > 1, f"no gateway batch larger than 1: {batches}"


def _as_batch(clip: np.ndarray):
    import torch

    from service.decode import Limits, sample_frames
    from service.ingest import RawFrames

    frames = sample_frames(RawFrames(clip, 16.0), signal_model.SPEC, Limits(10**9, 10**6, 10**6)).frames.numpy()
    return torch.from_numpy(frames[None]), torch.tensor([len(frames)])


async def test_triton_dynamic_batching_under_concurrency(triton):
    """Concurrent one-item requests straight to Triton: its statistics show fewer executions than inferences."""
    import tritonclient.grpc.aio as grpcaio

    from service.backends.base import FrameBatch
    from service.backends.triton import to_inputs

    clip = videos.moving_scene(9, 64, 64)
    batch = FrameBatch.assemble([clip], [""])
    before = stats(triton)
    async with grpcaio.InferenceServerClient(triton.grpc_url) as client:
        results = await asyncio.gather(*(client.infer("signal", to_inputs(batch)) for _ in range(32)))
    scores = [r.as_numpy("SCORES") for r in results]
    assert all(s.shape == (1, K) for s in scores)
    change = counted(triton, before, "requests", 32)
    assert change["requests"] == 32 and change["inferences"] == 32
    assert change["executions"] < change["inferences"], change


async def test_bad_input_never_reaches_triton(triton_gateway, triton):
    good = {"video": video_ref(unique_clip(), fps=16)}
    bad_requests = [
        ({"items": [{"video": {"frames": "not base64!", "fps": 16}}]}, 400),
        ({"items": [{"video": {"data": b64(os.urandom(4096))}}]}, 415),
        ({"items": [{"video": {"frames": b64(videos.npy_bytes(np.zeros((4, 4), np.uint8))), "fps": 16}}]}, 400),
        ({"items": [good, {"video": {"data": b64(b"\x00" * 100)}}]}, 415),  # one bad item fails the request
        ({"items": [good], "models": ["no-such-model"]}, 400),
        ({"items": [good], "weights": {"signal.nope": 1.0}}, 400),
        ({"items": []}, 422),
    ]
    before = stats(triton)
    async with httpx.AsyncClient(base_url=triton_gateway.url, timeout=60) as client:
        for body, status in bad_requests:
            response = await client.post("/v1/score", json=body)
            assert response.status_code == status, (body, response.text)
            assert set(response.json()["error"]) >= {"code", "message", "item"}
        # A good request last: once Triton has counted it, anything sent before it is counted too.
        assert (await client.post("/v1/score", json={"items": [good]})).status_code == 200
    change = counted(triton, before, "requests", 1)
    assert change == {"requests": 1, "failed": 0, "inferences": 1, "executions": 1}, change  # only the good one


async def test_triton_timeout_gives_504(triton):
    """A Triton deadline shorter than any answer gives 504 with the timeout error."""
    running = start_server(triton_gateway_app(triton.grpc_url, triton_timeout_s=1e-6))
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
            response = await client.post("/v1/score", json={"items": [{"video": video_ref(unique_clip(), fps=16)}]})
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "timeout"
    finally:
        running.stop()


async def test_unreachable_triton_or_missing_model_gives_503():
    unused = free_port()
    for overrides, reason in (({}, "unreachable"), ({"triton_models": {"signal": "absent"}}, "absent")):
        url = f"127.0.0.1:{unused}"
        running = start_server(triton_gateway_app(url, **overrides))
        try:
            async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
                ready = await client.get("/readyz")
                scored = await client.post("/v1/score", json={"items": [{"video": video_ref(unique_clip(), fps=16)}]})
            assert ready.status_code == 503 and url in ready.json()["error"]["message"]
            assert scored.status_code == 503, scored.text
            error = scored.json()["error"]
            assert error["code"] == "backend_unavailable" and url in error["message"]
            if reason == "absent":
                assert "'absent'" in error["message"]
        finally:
            running.stop()


async def test_model_mapping_and_readiness(triton):
    """Readiness checks the mapped Triton model: a missing one is named; the right one is ready."""
    for mapping, ready in (({"signal": "absent"}, False), ({"signal": "signal"}, True)):
        running = start_server(triton_gateway_app(triton.grpc_url, triton_models=mapping))
        try:
            async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
                response = await client.get("/readyz")
            if ready:
                assert response.status_code == 200 and response.json()["models"] == ["signal"]
            else:
                assert response.status_code == 503 and "'absent' is not ready" in response.json()["error"]["message"]
        finally:
            running.stop()


async def test_triton_stopped_mid_test_gives_503_and_the_gateway_recovers(tmp_path: Path):
    """Kill Triton under load: requests get 503 (never hang or 500); once it is back they get 200 again."""
    triton_repo = write_python_repo(tmp_path / "repo", {"signal": SIGNAL}, TEST_OPTIONS)  # signal only: quick restarts
    server = start_triton(triton_repo)
    ports = (server.grpc_port, server.http_port, server.metrics_port)
    running = start_server(triton_gateway_app(server.grpc_url))
    statuses: list[int] = []
    errors: list[dict] = []
    phase = {"stop": False}

    async def load(client: httpx.AsyncClient) -> None:
        while not phase["stop"]:
            body = {"items": [{"video": video_ref(unique_clip(), fps=16)}]}  # unique: a cache cannot answer for Triton
            response = await client.post("/v1/score", json=body)  # raises if a request is left unanswered
            statuses.append(response.status_code)
            if response.status_code != 200:
                errors.append(response.json()["error"])
            await asyncio.sleep(0.01)

    async def wait_for(predicate, what: str, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s  # a safety net against hanging, not a speed check
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; statuses {statuses[-20:]}"
            await asyncio.sleep(0.05)

    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=120) as client:
            workers = [asyncio.create_task(load(client)) for _ in range(4)]
            await wait_for(lambda: statuses.count(200) >= 8, "200s before the outage")
            await asyncio.to_thread(server.kill)
            server.stop()  # clean up its work dir and shared memory
            served_before = len(statuses)
            await wait_for(lambda: statuses[served_before:].count(503) >= 8, "503s during the outage")
            assert (await client.get("/readyz")).status_code == 503
            server = await asyncio.to_thread(start_triton, triton_repo, ports)  # same address: no gateway restart
            back = len(statuses)
            await wait_for(lambda: statuses[back:].count(200) >= 8, "200s after Triton is back")
            phase["stop"] = True
            await asyncio.gather(*workers)  # every request of every worker got its answer
            assert (await client.get("/readyz")).status_code == 200
    finally:
        phase["stop"] = True
        running.stop()
        server.stop()
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert {e["code"] for e in errors} == {"backend_unavailable"}
    assert all(server.grpc_url in e["message"] for e in errors)


def test_vrs_triton_command_serves_the_generated_repository(tmp_path: Path):
    """`vrs triton` generates the repository, serves it until SIGTERM, then stops Triton and its stubs."""
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    command = [
        sys.executable, "-m", "service.cli", "triton", "--repo", str(tmp_path / "repo"), "--grpc-port", str(grpc_port),
        "--http-port", str(http_port), "--metrics-port", str(metrics_port), "--max-batch-size", "4",
    ]  # fmt: skip
    log = open(tmp_path / "vrs.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])
    url = f"http://127.0.0.1:{http_port}/v2/models/signal/ready"
    try:
        deadline = time.monotonic() + 300
        while not _http_ok(url):
            assert process.poll() is None, (tmp_path / "vrs.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "vrs.log").read_text()[-3000:]
            time.sleep(0.2)
        config = parse((tmp_path / "repo" / "signal" / "config.pbtxt").read_text())
        assert config.max_batch_size == 4
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            assert client.get_model_config("signal").config.max_batch_size == 4  # Triton loaded our config
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        log.close()
    assert not _http_ok(f"http://127.0.0.1:{http_port}/v2/health/live")  # tritonserver is gone too


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


async def test_triton_queue_policy_errors_map_to_429_and_504(tmp_path: Path):
    """Real rejections from Triton's queue policy (a queue of 2): queue full -> 429, queue timeout -> 504."""
    import tritonclient.grpc.aio as grpcaio
    from tritonclient.utils import InferenceServerException

    from service.backends.base import FrameBatch
    from service.backends.triton import to_inputs, to_service_error
    from service.errors import Overloaded, Timeout

    options = TritonOptions(max_queue_delay_us=20_000, max_queue_size=2)
    server = start_triton(write_python_repo(tmp_path / "repo", {"signal": SIGNAL}, options))
    batch = FrameBatch.assemble([videos.moving_scene(9, 64, 64)], [""])
    try:
        async with grpcaio.InferenceServerClient(server.grpc_url) as client:
            flood = await asyncio.gather(
                *(client.infer("signal", to_inputs(batch)) for _ in range(16)), return_exceptions=True
            )
            # A 1 us queue timeout (the config allows per-request overrides) expires while the batcher waits.
            late = await asyncio.gather(client.infer("signal", to_inputs(batch), timeout=1), return_exceptions=True)
    finally:
        server.stop()
    full = [
        to_service_error(e, "signal", server.grpc_url, 60) for e in flood if isinstance(e, InferenceServerException)
    ]
    assert full and all(isinstance(e, Overloaded) and e.status == 429 for e in full), flood
    assert len(full) < len(flood)  # the queue took some
    (expired,) = late
    assert isinstance(expired, InferenceServerException), expired
    mapped = to_service_error(expired, "signal", server.grpc_url, 60)
    assert isinstance(mapped, Timeout) and mapped.status == 504, expired.message()


# --- checkpoint-backed models (videoalign, clip-segmental) ---------------------------------


def test_checkpoint_model_config_names_its_directory_not_a_forward(checkpoints: Checkpoints, tmp_path: Path):
    """The config says where to load the model from (absolute paths, base dirs as JSON) and warms up on valid input."""
    loaded = load_models(list(checkpoints.model_dirs), checkpoints.model_dirs, checkpoints.base_model_dirs)
    for name, model in loaded.items():
        config = parse(python_config(model, TEST_OPTIONS, checkpoints.model_dirs[name], checkpoints.base_model_dirs))
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params == {
            "model_name": name,
            "model_dir": str(checkpoints.model_dirs[name].resolve()),
            "base_model_dirs": json.dumps({BASE_ID: str(checkpoints.base_model_dirs[BASE_ID].resolve())}),
            "spec_version": model.spec.version,
            "device": "cpu",  # KIND_CPU instances; "cuda" gives KIND_GPU (tests/test_gpu_path.py)
            "dtype": "auto",
        }
        assert config.name == name and config.max_batch_size == model.spec.batching.max_batch_size
        assert list(config.output[0].dims) == [len(model.spec.dimensions)]
        (warmup,) = config.model_warmup
        frames, side = warmup_shape(model.spec)
        assert list(warmup.inputs["FRAMES"].dims) == [frames, side, side, 3]
        assert warmup.inputs["PROMPT"].input_data_file == "prompt"
        # The bound forward of a loaded checkpoint cannot be named as module:function.
        with pytest.raises(ValueError, match="not importable"):
            forward_path(model)
        with pytest.raises(ValueError, match=f"{name}: a checkpoint-backed model needs its directory.*VRS_MODEL_DIRS"):
            python_config(model)
    # Paths that need escaping survive the round trip through protobuf text format.
    odd = tmp_path / 'a "quoted" \\ dir'
    config = parse(python_config(loaded["clip-segmental"], model_dir=odd, base_model_dirs={'id "x"': odd}))
    assert config.parameters["model_dir"].string_value == str(odd)
    assert json.loads(config.parameters["base_model_dirs"].string_value) == {'id "x"': str(odd)}


def test_warmup_clip_is_one_a_request_could_bring(checkpoints: Checkpoints):
    """Warm-up frames and sides obey each spec: frame count bounds and multiple, side multiple and pixel bounds."""
    loaded = load_models(list(checkpoints.model_dirs), checkpoints.model_dirs, checkpoints.base_model_dirs)
    specs = [SIGNAL.spec, loaded["videoalign"].spec, loaded["clip-segmental"].spec]
    assert [warmup_shape(s) for s in specs] == [(4, 32), (4, 336), (4, 32)]  # videoalign: 28 * 12; tiny CLIP: 32 px
    for spec in specs:
        frames, side = warmup_shape(spec)
        s, r = spec.sampling, spec.resolution
        assert s.min_frames <= frames <= s.max_frames and frames % s.multiple_of == 0
        assert side % r.size_factor == 0 and r.min_pixels <= side * side <= r.max_pixels


def test_vrs_triton_writes_checkpoint_models_from_settings_and_flags(checkpoints: Checkpoints, tmp_path, monkeypatch):
    """`vrs triton` takes directories from VRS_MODEL_DIRS / VRS_BASE_MODEL_DIRS (as the gateway) and --model-dir flags;
    a bad directory stops it before Triton starts, naming the path."""
    monkeypatch.setenv("VRS_MODEL_DIRS", json.dumps({"videoalign": str(checkpoints.model_dirs["videoalign"])}))
    monkeypatch.setenv("VRS_BASE_MODEL_DIRS", json.dumps({k: str(v) for k, v in checkpoints.base_model_dirs.items()}))
    parser = argparse.ArgumentParser()
    triton_command.add_parser(parser.add_subparsers())

    def args(*extra: str) -> argparse.Namespace:
        return parser.parse_args(["triton", "--repo", str(tmp_path / "repo"), *extra])

    clip = checkpoints.model_dirs["clip-segmental"]
    names = ("signal", "videoalign", "clip-segmental")
    repo = triton_command.write_repo(args("--models", *names, "--model-dir", f"clip-segmental={clip}"))
    dirs = {
        name: parse((repo / name / "config.pbtxt").read_text()).parameters["model_dir"].string_value
        for name in ("videoalign", "clip-segmental")
    }
    assert dirs == {
        "videoalign": str(checkpoints.model_dirs["videoalign"].resolve()),
        "clip-segmental": str(clip.resolve()),
    }
    assert "model_dir" not in parse((repo / "signal" / "config.pbtxt").read_text()).parameters
    assert (repo / "videoalign" / "warmup" / "prompt").read_bytes() == (7).to_bytes(4, "little") + b"a video"

    missing = tmp_path / "no-such-clip"
    with pytest.raises(SystemExit) as info:
        triton_command.write_repo(args("--models", "clip-segmental", "--model-dir", f"clip-segmental={missing}"))
    assert str(missing) in str(info.value.code) and "no config.json" in str(info.value.code)
    monkeypatch.delenv("VRS_MODEL_DIRS")
    with pytest.raises(SystemExit, match="no checkpoint directory configured"):
        triton_command.write_repo(args("--models", "videoalign"))


DIMS = {
    "videoalign": ["VQ", "MQ", "TA", "Overall"],
    "clip-segmental": ["segmental", "temporal_consistency", "goal_baseline"],
}
PROMPTS = ["a cat surfing a wave at sunset", "a red car in the rain", "a dog runs on the beach"]


@pytest.fixture(scope="module")
def checkpoint_gateways(triton: LocalTriton, checkpoints: Checkpoints) -> Iterator[tuple[RunningServer, RunningServer]]:
    """An in-process and a Triton gateway over the same checkpoint settings. A batch closes at 3 items
    (the wait is only a backstop), so a 3-video request is one gateway batch on both."""
    with gateway_pair(
        triton.grpc_url, models=["videoalign", "clip-segmental"], default_model="videoalign", max_batch_size=3,
        max_wait_ms=60_000, model_dirs=checkpoints.model_dirs, base_model_dirs=checkpoints.base_model_dirs,
    ) as pair:  # fmt: skip
        yield pair


@contextmanager
def gateway_pair(
    triton_url: str, triton_only: dict | None = None, **settings
) -> Iterator[tuple[RunningServer, RunningServer]]:
    """An in-process gateway and one scoring through the Triton at ``triton_url``, both built from
    ``settings`` through the configuration path (the second also with ``triton_only``)."""
    servers = [start_server(create_app(test_settings(**settings)))]
    try:
        remote = test_settings(backend="triton", triton_url=triton_url, **(triton_only or {}), **settings)
        servers.append(start_server(create_app(remote)))
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def checkpoint_videos() -> list[bytes]:
    """Two of one size and different lengths (one padded Triton request), one portrait (its own request)."""
    specs = [(33, 16, 240, 416, 2.0), (49, 8, 240, 416, 3.5), (40, 10, 360, 200, 1.0)]
    return [videos.encode(videos.moving_scene(n, h, w, speed=s), "mp4", fps=fps) for n, fps, h, w, s in specs]


async def _score_both(gateways, model: str, data: list[bytes], triton: LocalTriton) -> tuple:
    """Score ``data`` (one request) on both gateways; return both score arrays and Triton's counter change."""
    local, remote = gateways
    items = [{"video": {"data": b64(v)}, "prompt": p} for v, p in zip(data, PROMPTS)]
    body = {"items": items, "models": [model]} | ({"normalise": True} if model == "videoalign" else {})
    before = stats(triton, model)
    async with httpx.AsyncClient(timeout=300) as client:
        answers = await asyncio.gather(*(client.post(f"{g.url}/v1/score", json=body) for g in (local, remote)))
    arrays = []
    for answer in answers:
        assert answer.status_code == 200, answer.text
        arrays.append(np.array([[r["scores"][f"{model}.{d}"] for d in DIMS[model]] for r in answer.json()["results"]]))
    for g in gateways:
        assert dict(g.app.state.engine.batchers[model].batch_sizes) == {3: 1}  # the three videos were one gateway batch
    return arrays[0], arrays[1], counted(triton, before, "inferences", len(data), model)


async def test_videoalign_through_triton_equals_in_process_and_reference(checkpoint_gateways, checkpoints, triton):
    """The tiny VideoReward served by Triton's python stub (loaded from disk there) scores as the
    in-process gateway and as the transformers + PEFT reference built in tests/test_videoalign.py."""
    data = checkpoint_videos()
    local, remote, change = await _score_both(checkpoint_gateways, "videoalign", data, triton)
    # Two frame sizes: two Triton requests, the first carrying both landscape videos (padded along T).
    assert change["inferences"] == 3 and change["requests"] == 2 and change["failed"] == 0, change
    np.testing.assert_allclose(remote, local, atol=1e-5, rtol=0)

    model = load_models(["videoalign"], checkpoints.model_dirs, checkpoints.base_model_dirs)["videoalign"]
    clips = [sample_frames(EncodedVideo(v), model.spec, Limits(10**9, 10**6, 10**6)).frames.numpy() for v in data]
    assert [len(c) for c in clips] == [4, 12, 8]
    reference = VideoAlignReference(checkpoints.model_dirs["videoalign"], checkpoints.base_model_dirs[BASE_ID])
    expected = np.concatenate([reference([c], [p]) for c, p in zip(clips, PROMPTS)])  # one video per forward
    np.testing.assert_allclose(remote, expected, atol=1e-4, rtol=0)
    assert np.abs(expected[0] - expected[1]).max() > 1e-2  # the batched videos really score differently


async def test_clip_segmental_through_triton_equals_in_process_and_reference(checkpoint_gateways, checkpoints, triton):
    data = checkpoint_videos()
    local, remote, change = await _score_both(checkpoint_gateways, "clip-segmental", data, triton)
    assert change["inferences"] == 3 and change["requests"] == 2 and change["failed"] == 0, change
    np.testing.assert_allclose(remote, local, atol=1e-5, rtol=0)

    clip_dir = checkpoints.model_dirs["clip-segmental"]
    model = load_models(["clip-segmental"], checkpoints.model_dirs)["clip-segmental"]
    for row, video, text in zip(remote, data, PROMPTS):
        frames = sample_frames(EncodedVideo(video), model.spec, Limits(10**9, 10**6, 10**6)).frames.numpy()
        # 1e-5 as in tests/test_clip_segmental.py (PIL float resizes against torch's).
        np.testing.assert_allclose(row, clip_reference(clip_dir, frames, text), atol=1e-5, rtol=0)
    assert np.abs(remote[0] - remote[1]).max() > 1e-3


def test_bad_checkpoint_directory_fails_the_triton_model_naming_the_path(checkpoints: Checkpoints, tmp_path: Path):
    """Directories that went bad after the repository was generated: Triton refuses to start, and its
    log names the path (a missing CLIP directory; a VideoReward directory with a newer step)."""
    loaded = load_models(list(checkpoints.model_dirs), checkpoints.model_dirs, checkpoints.base_model_dirs)
    clip, reward = tmp_path / "clip", tmp_path / "VideoReward"
    shutil.copytree(checkpoints.model_dirs["clip-segmental"], clip)
    shutil.copytree(checkpoints.model_dirs["videoalign"], reward)
    dirs = {"clip-segmental": clip, "videoalign": reward}
    repo = write_python_repo(tmp_path / "repo", loaded, TEST_OPTIONS, dirs, checkpoints.base_model_dirs)
    shutil.rmtree(clip)
    (reward / "checkpoint-7").rename(reward / "checkpoint-8")
    server = LocalTriton(repo, free_port(), free_port(), free_port(), log_path=tmp_path / "triton.log")
    with pytest.raises(RuntimeError, match="exited during start-up"):
        server.start(timeout_s=300)
    log = (tmp_path / "triton.log").read_text()
    assert f"{clip}: no config.json" in log, log
    assert f"{reward} now holds version VideoReward@checkpoint-8" in log and "VideoReward@checkpoint-7" in log, log


def test_a_gateway_in_front_of_triton_reads_only_the_checkpoints_specs(checkpoint_gateways, checkpoints, tmp_path):
    """With backend=triton the weights live in Triton: the gateway's models have the same specs as a
    full load, read no weight file, and refuse to run a forward themselves."""
    full = load_models(list(checkpoints.model_dirs), checkpoints.model_dirs, checkpoints.base_model_dirs)
    _, remote = checkpoint_gateways
    for name, model in remote.app.state.engine.models.items():
        assert model.spec == full[name].spec
        with pytest.raises(RuntimeError, match="spec only"):
            model.forward(None, None, [])

    # A copy of the VideoReward directory without its weight files: the spec still loads, the model does not.
    hollow = shutil.copytree(checkpoints.model_dirs["videoalign"], tmp_path / "videoalign")
    for weights in [*hollow.glob("checkpoint-*/*.safetensors"), *hollow.glob("checkpoint-*/*.pth")]:
        weights.unlink()
    spec, reference = load_spec("videoalign", hollow).spec, full["videoalign"].spec
    step = spec.version.split("@")[1].split("+")[0]
    assert step == reference.version.split("@")[1].split("+")[0]  # the same checkpoint step
    assert spec.version != reference.version  # other files: another fingerprint (models/fingerprint.py)
    assert spec.model_copy(update={"version": reference.version}) == reference  # the version aside
    with pytest.raises(ModelLoadError):
        load_model("videoalign", hollow, checkpoints.base_model_dirs)


# --- shared-memory transport ------------------------------------------------------------------


async def test_system_shared_memory_transport_scores_equal_grpc_bytes(triton_gateway, triton):
    """VRS_TRITON_TRANSPORT=system_shm: frames reach Triton through registered POSIX shared memory,
    one region per in-flight batch, reused; scores equal those of frames sent in the gRPC message."""
    shm_gateway = start_server(triton_gateway_app(triton.grpc_url, triton_transport="system_shm"))
    try:
        backend = shm_gateway.app.state.engine.backend
        async with httpx.AsyncClient(timeout=120) as client:
            bodies = [{"items": workload()}, {"items": workload()[:2]}]  # two batches: regions are reused
            for body in bodies:
                plain, shared = await asyncio.gather(
                    client.post(f"{triton_gateway.url}/v1/score", json=body),
                    client.post(f"{shm_gateway.url}/v1/score", json=body),
                )
                assert plain.status_code == shared.status_code == 200, (plain.text, shared.text)
                for a, b in zip(plain.json()["results"], shared.json()["results"], strict=True):
                    assert b["scores"] == pytest.approx(a["scores"], abs=1e-6)
        with grpcclient.InferenceServerClient(triton.grpc_url) as client:
            status = client.get_system_shared_memory_status(as_json=True).get("regions", {})
        regions = [r for r in backend._regions._queue if r.size]
        assert regions and {r.name for r in regions} <= set(status), status  # registered with Triton, still there
        assert len(regions) <= backend.max_concurrent_batches
    finally:
        shm_gateway.stop()
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        status = client.get_system_shared_memory_status(as_json=True).get("regions", {})
    assert not {r.name for r in regions} & set(status)  # unregistered when the gateway stopped


async def test_system_shm_gateway_recovers_when_triton_restarts(tmp_path: Path):
    """A restarted Triton knows none of the gateway's shared-memory regions: the gateway registers
    them again (retrying the batch once), so scoring resumes without a gateway restart, and /readyz's
    200 is true. The probe found every request answered 503 "not loaded" after the restart, forever."""
    triton_repo = write_python_repo(tmp_path / "repo", {"signal": SIGNAL}, TEST_OPTIONS)  # signal only: quick restarts
    server = start_triton(triton_repo)
    ports = (server.grpc_port, server.http_port, server.metrics_port)
    running = start_server(triton_gateway_app(server.grpc_url, triton_transport="system_shm"))
    backend = running.app.state.engine.backend
    regions = backend.max_concurrent_batches

    async def score(client: httpx.AsyncClient, status: int = 200) -> dict:
        # One item per request, one at a time: the regions are taken in turn, so each is used.
        response = await client.post("/v1/score", json={"items": [{"video": video_ref(unique_clip(), fps=16)}]})
        assert response.status_code == status, response.text
        return response.json()

    async def restart(client: httpx.AsyncClient, during_outage=None) -> LocalTriton:
        await asyncio.to_thread(server.stop)
        if during_outage:
            await during_outage()
        back = await asyncio.to_thread(start_triton, triton_repo, ports)  # same address: no gateway restart
        deadline = time.monotonic() + 60  # the channel reconnects within about a second
        while (await client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "the gateway never saw Triton ready again"
            await asyncio.sleep(0.2)
        return back

    async def refused(client: httpx.AsyncClient) -> None:
        error = (await score(client, 503))["error"]
        assert error["code"] == "backend_unavailable" and "unavailable" in error["message"], error
        assert not [r for r in backend._all_regions if r.registered]  # re-registered when Triton is back

    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=120) as client:
            for _ in range(regions):
                await score(client)
            # Restarted while the gateway was idle: Triton names the region unknown; registered, sent again.
            server = await restart(client)
            for _ in range(regions + 1):  # a 200 for every region, each registered with the new Triton
                await score(client)
            # A request during the outage: Triton unavailable, so the regions are registered again on use.
            server = await restart(client, lambda: refused(client))
            for _ in range(regions):
                await score(client)
        with grpcclient.InferenceServerClient(server.grpc_url) as triton_client:
            status = triton_client.get_system_shared_memory_status(as_json=True).get("regions", {})
        assert sorted(status) == sorted(r.name for r in backend._all_regions), status
    finally:
        running.stop()
        server.stop()


async def test_a_region_triton_does_not_know_is_named_as_such(triton):
    """Triton's answer for an unknown shared-memory region is a 503 that says so, not "model not loaded"."""
    import tritonclient.grpc.aio as grpcaio
    from tritonclient.utils import InferenceServerException

    from service.backends.base import FrameBatch
    from service.backends.triton import to_inputs, to_service_error
    from service.errors import BackendUnavailable

    batch = FrameBatch.assemble([videos.moving_scene(9, 64, 64)], [""])
    inputs = to_inputs(batch)
    inputs[0].set_shared_memory("vrs_never_registered", batch.frames.numel())
    async with grpcaio.InferenceServerClient(triton.grpc_url) as client:
        with pytest.raises(InferenceServerException) as info:
            await client.infer("signal", inputs)
    error = to_service_error(info.value, "signal", triton.grpc_url, 60)
    assert isinstance(error, BackendUnavailable) and error.status == 503
    assert "shared-memory region" in str(error) and "not loaded" not in str(error), error
    assert triton.grpc_url in str(error) and "VRS_TRITON_TRANSPORT" in str(error)
