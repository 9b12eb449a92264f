"""Run model forwards in a Triton Inference Server, over KServe v2 gRPC (``tritonclient.grpc.aio``).

One gateway batch is one Triton request carrying exactly the inputs of the model's contract
(models/contract.py): ``FRAMES`` uint8 [B,T,H,W,3] and ``NUM_FRAMES`` int32 [B,1], then
``PROMPT`` bytes [B,1] for a python-backend model, or, for a compiled (TensorRT) model that reads
text, the prompts tokenised here as ``INPUT_IDS`` / ``ATTENTION_MASK`` int64 [B,L]; -> ``SCORES``
fp32 [B,K]. Frames travel in the gRPC message (``grpc``) or, when Triton runs on this host,
through a shared-memory region per in-flight batch (``system_shm``, ``cuda_shm``), registered with
Triton once and reused (grown when a batch needs more).
Triton's errors become the gateway's: unreachable, model not loaded or a shared-memory region
Triton does not know -> 503, deadline or queue timeout -> 504, Triton's queue full -> 429. The
gRPC channel reconnects by itself (with a short backoff cap), so the gateway recovers when Triton
comes back without a restart; a restarted Triton knows none of the regions, so they are
registered again (after Triton was unavailable, or when it names a region unknown: then the
batch is sent once more).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import numpy as np
import torch
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from models import contract
from models.spec import ModelSpec
from models.tokens import Tokenise, tokeniser
from service.backends.base import FrameBatch
from service.errors import BackendUnavailable, Overloaded, Timeout

CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    # gRPC backs off up to 120 s between reconnect attempts by default; cap it so a restarted
    # Triton is picked up within about a second.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class TritonBackend:
    """Scores batches on a Triton server; ``model_names`` maps gateway model names to Triton's."""

    def __init__(
        self,
        url: str,
        models: list[str],
        *,
        model_names: dict[str, str] | None = None,
        timeout_s: float = 60.0,
        ready_timeout_s: float = 2.0,
        max_inflight: int = 4,
        contracts: dict[str, Wire] | None = None,
        transport: str = "grpc",
    ) -> None:
        self.url = url
        # Several batches in flight let Triton's dynamic batcher merge them and overlap the
        # gateway's serialisation with Triton's execution.
        self.max_concurrent_batches = max_inflight
        self.device = torch.device("cpu")  # gRPC carries bytes: batches are assembled on the host
        self._models = list(models)
        self._names = dict(model_names or {})
        self.timeout_s = timeout_s
        self.ready_timeout_s = ready_timeout_s
        self._client: grpcaio.InferenceServerClient | None = None
        self._wires = dict(contracts or {})  # model -> its contract; default: the python-backend one
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown Triton transport {transport!r} (one of {', '.join(TRANSPORTS)})")
        self.transport = transport
        self._regions: asyncio.Queue | None = None  # free shared-memory regions, one per in-flight batch
        self._all_regions: list[ShmRegion] = []  # free or in use

    def triton_name(self, model: str) -> str:
        return self._names.get(model, model)

    async def start(self) -> None:
        # The channel connects lazily and belongs to the running event loop, so it is made here.
        self._client = grpcaio.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
        if self.transport != "grpc":
            make_region = TRANSPORTS[self.transport]
            assert make_region is not None  # only "grpc" has none
            self._regions = asyncio.Queue()
            for i in range(self.max_concurrent_batches * max(1, len(self._models))):
                self._all_regions.append(make_region(f"vrs{os.getpid()}_{id(self):x}_{i}"))
                self._regions.put_nowait(self._all_regions[-1])

    async def close(self) -> None:
        if self._client is not None:
            if self._regions is not None:
                while not self._regions.empty():
                    await self._regions.get_nowait().release(self._client)
                self._regions = None
                self._all_regions = []
            await self._client.close()
            self._client = None

    async def ready(self) -> tuple[bool, str]:
        """Triton is up and every configured model is loaded and ready."""
        if self._client is None:
            return False, "Triton backend not started"
        try:
            if not await self._client.is_server_ready(client_timeout=self.ready_timeout_s):
                return False, f"Triton at {self.url} is not ready"
            for model in self._models:
                if not await self._client.is_model_ready(self.triton_name(model), client_timeout=self.ready_timeout_s):
                    return False, f"model {self.triton_name(model)!r} is not ready on Triton at {self.url}"
        except InferenceServerException as exc:
            return False, f"Triton at {self.url} is unreachable: {exc.message()}"
        return True, "ok"

    async def infer(self, model: str, batch: FrameBatch) -> np.ndarray:
        if self._client is None:
            raise BackendUnavailable("Triton backend not started")
        name = self.triton_name(model)
        wire = self._wires.get(model, PYTHON_WIRE)
        region = await self._regions.get() if self._regions is not None else None
        try:
            arrays = await asyncio.to_thread(input_arrays, batch, wire)  # tokenising, copies: off the event loop
            try:
                result = await self._send(name, batch, wire, arrays, region)
            except InferenceServerException as exc:
                if region is None or not (unknown_region(exc) or exc.status() == "StatusCode.UNAVAILABLE"):
                    raise
                # Triton restarted (or may have): it knows none of our regions. Register them again as
                # each is next used; Triton refused this batch before running it, so send it again.
                for each in self._all_regions:
                    each.registered = False
                if not unknown_region(exc):
                    raise
                result = await self._send(name, batch, wire, arrays, region)
        except InferenceServerException as exc:
            raise to_service_error(exc, name, self.url, self.timeout_s) from exc
        finally:
            if region is not None:
                assert self._regions is not None  # the region came from it
                self._regions.put_nowait(region)
        scores = result.as_numpy(contract.SCORES)
        if scores is None:
            raise RuntimeError(f"Triton model {name!r} returned no {contract.SCORES} output")
        return scores.astype(np.float32, copy=False)

    async def _send(self, name: str, batch: FrameBatch, wire: Wire, arrays: dict[str, np.ndarray], region):
        assert self._client is not None  # infer() checked
        if region is not None:
            await region.fit(self._client, arrays[contract.FRAMES].nbytes)
            await asyncio.to_thread(region.write, arrays[contract.FRAMES])
        inputs = await asyncio.to_thread(to_inputs, batch, wire, arrays, region)
        return await self._client.infer(name, inputs, client_timeout=self.timeout_s)


@dataclass(frozen=True)
class Wire:
    """What the gateway sends one Triton model: its contract and, for token inputs, the tokeniser."""

    contract: contract.Contract
    tokenise: Tokenise | None = None


PYTHON_WIRE = Wire(contract.Contract(contract.gateway_inputs("python", needs_prompt=True), ()))


def triton_contracts(settings, specs: dict[str, ModelSpec]) -> dict[str, Wire]:
    """Each model's wire for the configured variant: VRS_COMPILE=tensorrt means compiled models in
    Triton, so models that read text get a tokeniser loaded from their checkpoint directory."""
    variant: contract.Variant = "tensorrt" if settings.compile == "tensorrt" else "python"
    wires = {}
    for name, spec in specs.items():
        wanted = contract.gateway_contract(spec, variant)
        tokenise = None
        if contract.INPUT_IDS in wanted.input_names:
            if name not in settings.model_dirs:
                raise ValueError(f"{name}: VRS_COMPILE=tensorrt needs its tokenizer: set VRS_MODEL_DIRS for it")
            tokenise = tokeniser(name, settings.model_dirs[name])
        wires[name] = Wire(wanted, tokenise)
    return wires


def input_arrays(batch: FrameBatch, wire: Wire = PYTHON_WIRE) -> dict[str, np.ndarray]:
    """Exactly the contract's inputs for ``batch`` (batch dimension first), in its order and dtypes."""
    b = len(batch.frames)
    names = wire.contract.input_names
    # The backend's edge, where tensors become bytes.
    arrays = {
        contract.FRAMES: batch.frames.cpu().numpy(),
        contract.NUM_FRAMES: batch.num_frames.to(torch.int32).numpy().reshape(b, 1),
    }
    if contract.PROMPT in names:
        arrays[contract.PROMPT] = np.array([p.encode("utf-8") for p in batch.prompts], dtype=np.object_).reshape(b, 1)
    if contract.INPUT_IDS in names:
        if wire.tokenise is None:
            raise RuntimeError("a token-id contract needs a tokeniser")
        arrays[contract.INPUT_IDS], arrays[contract.ATTENTION_MASK] = wire.tokenise(batch.prompts)
    return {t.name: np.ascontiguousarray(arrays[t.name], dtype=t.numpy) for t in wire.contract.inputs}


def to_inputs(
    batch: FrameBatch, wire: Wire = PYTHON_WIRE, arrays: dict[str, np.ndarray] | None = None, region=None
) -> list[grpcclient.InferInput]:
    """The batch as Triton inputs; with a shared-memory ``region`` (already holding the frames),
    FRAMES points into it instead of riding in the message."""
    arrays = arrays if arrays is not None else input_arrays(batch, wire)
    inputs = []
    for tensor in wire.contract.inputs:
        array = arrays[tensor.name]
        infer_input = grpcclient.InferInput(tensor.name, list(array.shape), tensor.dtype)
        if region is not None and tensor.name == contract.FRAMES:
            infer_input.set_shared_memory(region.name, array.nbytes)
        else:
            infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs


class ShmRegion:
    """A shared-memory region of the gateway's, registered with Triton under ``name``. A subclass says
    how the memory is made (``_create``, ``_destroy``, ``write``) and registered (``_register``, ``_unregister``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.size = 0
        self.registered = False  # set to False when Triton may have forgotten it (a restart)
        self._handle = None

    # What a subclass provides.
    def _create(self, size: int):
        raise NotImplementedError

    def _destroy(self) -> None:
        raise NotImplementedError

    async def _register(self, client: grpcaio.InferenceServerClient) -> None:
        raise NotImplementedError

    async def _unregister(self, client: grpcaio.InferenceServerClient) -> None:
        raise NotImplementedError

    def write(self, array: np.ndarray) -> None:
        raise NotImplementedError

    async def fit(self, client: grpcaio.InferenceServerClient, nbytes: int) -> None:
        """Make the region hold at least ``nbytes`` (re-created only when it grows) and be registered
        with Triton (once, and again after ``registered`` was cleared)."""
        if nbytes > self.size:
            await self.release(client)
            size = max(nbytes, 2 * self.size)
            self._handle = self._create(size)
            self.size = size
        if not self.registered:
            try:  # a Triton that did not restart still has it
                await self._unregister(client)
            except InferenceServerException:
                pass
            await self._register(client)
            self.registered = True

    async def release(self, client: grpcaio.InferenceServerClient) -> None:
        if self._handle is None:
            return
        try:
            await self._unregister(client)
        except InferenceServerException:
            pass  # Triton gone: nothing registered any more
        self._destroy()
        self._handle, self.size, self.registered = None, 0, False


class SystemShmRegion(ShmRegion):
    """A POSIX shared-memory region (tritonclient.utils.shared_memory)."""

    def _create(self, size: int):
        import tritonclient.utils.shared_memory as shm

        return shm.create_shared_memory_region(self.name, f"/{self.name}", size)

    def _destroy(self) -> None:
        import tritonclient.utils.shared_memory as shm

        shm.destroy_shared_memory_region(self._handle)

    async def _register(self, client: grpcaio.InferenceServerClient) -> None:
        await client.register_system_shared_memory(self.name, f"/{self.name}", self.size)

    async def _unregister(self, client: grpcaio.InferenceServerClient) -> None:
        await client.unregister_system_shared_memory(self.name)

    def write(self, array: np.ndarray) -> None:
        import tritonclient.utils.shared_memory as shm

        shm.set_shared_memory_region(self._handle, [array])


class CudaShmRegion(ShmRegion):
    """A CUDA memory region on ``device`` shared with Triton by IPC handle (needs cuda-python and a GPU
    Triton can see). Frames already on the GPU (a torch CUDA tensor) are copied device to device."""

    def __init__(self, name: str, device: int = 0) -> None:
        import tritonclient.utils.cuda_shared_memory  # noqa: F401  (fails early without cuda-python)

        super().__init__(name)
        self.device = device

    def _create(self, size: int):
        import tritonclient.utils.cuda_shared_memory as cudashm

        return cudashm.create_shared_memory_region(self.name, size, self.device)

    def _destroy(self) -> None:
        import tritonclient.utils.cuda_shared_memory as cudashm

        cudashm.destroy_shared_memory_region(self._handle)

    async def _register(self, client: grpcaio.InferenceServerClient) -> None:
        import tritonclient.utils.cuda_shared_memory as cudashm

        await client.register_cuda_shared_memory(
            self.name, cudashm.get_raw_handle(self._handle), self.device, self.size
        )

    async def _unregister(self, client: grpcaio.InferenceServerClient) -> None:
        await client.unregister_cuda_shared_memory(self.name)

    def write(self, array) -> None:
        import tritonclient.utils.cuda_shared_memory as cudashm

        if hasattr(array, "__dlpack__") and not isinstance(array, np.ndarray):
            cudashm.set_shared_memory_region_from_dlpack(self._handle, [array])
        else:
            cudashm.set_shared_memory_region(self._handle, [array])


TRANSPORTS: dict[str, type[ShmRegion] | None] = {"grpc": None, "system_shm": SystemShmRegion, "cuda_shm": CudaShmRegion}


def unknown_region(exc: InferenceServerException) -> bool:
    """Triton's answer to an input in a shared-memory region it has no registration for."""
    return exc.status() == "StatusCode.NOT_FOUND" and "shared memory region" in (exc.message() or "").lower()


def to_service_error(exc: InferenceServerException, model: str, url: str, timeout_s: float) -> Exception:
    """Map a Triton/gRPC error to the status the client should see."""
    status, message = exc.status() or "", exc.message() or ""
    lowered = message.lower()
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return Timeout(f"Triton did not answer within {timeout_s:g} s (model {model!r})")
    if "timeout" in lowered and "expired" in lowered:
        return Timeout(f"request timed out in Triton's queue (model {model!r}): {message}")
    if "exceeds maximum queue size" in lowered:
        return Overloaded(f"Triton's queue for model {model!r} is full; try again shortly", retry_after_s=1.0)
    if status == "StatusCode.UNAVAILABLE":
        return BackendUnavailable(f"Triton at {url} is unavailable (model {model!r}): {message}")
    if "shared memory region" in lowered:
        return BackendUnavailable(
            f"Triton at {url} cannot use the gateway's shared-memory region (VRS_TRITON_TRANSPORT) "
            f"for model {model!r}: {message}"
        )
    if status == "StatusCode.NOT_FOUND" or "unknown model" in lowered or "not ready" in lowered:
        return BackendUnavailable(f"model {model!r} is not loaded on Triton at {url}: {message}")
    return RuntimeError(f"Triton error for model {model!r}: {status} {message}")
