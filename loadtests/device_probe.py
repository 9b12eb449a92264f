"""What the GPU path depends on, read off the machine it runs on (first step of loadtests/device_run.sh).

Prints one line per fact, so a failed NVDEC or Triton step can be explained from the log of the
same call: the GPU and driver, torch and its CUDA, PyAV's FFmpeg and whether it can open a CUDA
hardware device, the NVDEC library (libnvcuvid, which the driver provides, not the image), the
shared libpython the Triton python-backend stub links, and the carried packages' versions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys
import sysconfig


def fact(name: str, get) -> None:
    try:
        value = get()
    except Exception as exc:  # a probe reports, it does not stop
        value = f"unavailable ({type(exc).__name__}: {exc})"
    print(f"{name}: {value}", flush=True)


def loadable(lib: str) -> str:
    ctypes.CDLL(lib)
    return f"{lib} loads"


def hw_device() -> str:
    from av.codec.hwaccel import HWAccel, hwdevices_available

    available = hwdevices_available()
    if "cuda" not in available:
        return f"no cuda among {available}"
    HWAccel(device_type="cuda", allow_software_fallback=False)
    return f"cuda listed among {available}"


def nvdec_after_torch() -> str:
    """Decode a few frames with NVDEC after torch has made the CUDA context active, as the gateway
    does (models load first): what FFmpeg refused before nvdec shared the primary context."""
    import torch

    from models import signal
    from service import decode, nvdec
    from tests import videos

    torch.zeros(1, device="cuda")  # torch's primary context, active with its default flags
    data = videos.encode(videos.moving_scene(9, 720, 1280))
    (clip,) = decode.sample_container(
        data, [signal.SPEC], decode.Limits(10**9, 10**6, 10**6), nvdec.nvdec_path(torch.device("cuda", 0))
    )
    return f"{len(clip.indices)} frames decoded, on {clip.frames.device}"


def main() -> None:
    import torch

    fact("python", lambda: f"{platform.python_version()} at {sys.executable}")
    fact("cpus", os.cpu_count)
    if shutil.which("nvidia-smi"):
        fact("nvidia-smi", lambda: subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30).stdout.strip())  # fmt: skip
    fact("torch", lambda: f"{torch.__version__}, CUDA {torch.version.cuda}, available {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        fact("gpu", lambda: torch.cuda.get_device_name(0))
    fact("av", lambda: md.version("av"))
    fact("ffmpeg nvdec decoders", lambda: sorted(c for c in __import__("av").codecs_available if c.endswith("_cuvid")))
    fact("pyav cuda hwdevice", hw_device)
    fact("libnvcuvid", lambda: loadable(ctypes.util.find_library("nvcuvid") or "libnvcuvid.so.1"))
    fact("libcuda", lambda: loadable(ctypes.util.find_library("cuda") or "libcuda.so.1"))
    libdir, ldlib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    fact("libpython (Triton stub)", lambda: loadable(os.path.join(libdir, ldlib)))
    if torch.cuda.is_available():
        fact("nvdec after torch", nvdec_after_torch)
    names = ("transformers", "numpy", "fastapi", "uvicorn", "httptools", "pydantic", "aiodns", "pycares")
    for name in (*names, "tritonclient", "grpcio", "protobuf"):
        fact(name, lambda name=name: md.version(name))


if __name__ == "__main__":
    main()
