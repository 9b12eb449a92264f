"""A stand-in for a TensorRT plan in a Triton repository: the same Triton model, run by onnxruntime.

TensorRT cannot exist on these machines (no GPU; its libraries download from NVIDIA's index,
which is unreachable), so a test that serves the repository ``vrs triton --variant tensorrt``
writes replaces exactly one thing: each ``tensorrt_plan`` model becomes a python-backend model of
the same name, inputs, outputs, batch limit and dynamic batcher (``KIND_CPU``, no engine
profiles) whose ``model.py`` runs the part's exported ONNX (``vrs compile export``) with
onnxruntime. Everything around the plans (the ensemble, the python steps, what the gateway
sends) is then served by a real Triton as written.

``stand_in_plans(repo, onnx_dir)`` does the replacement; ``TritonPythonModel`` is the model it
installs (imported by the generated ``model.py`` inside Triton's python stub).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from models.triton_repo import default_python_paths

MODEL_PY = """# Stand-in for a TensorRT plan (tests/onnx_plan.py): runs model.onnx with onnxruntime.
import sys

sys.path[:0] = [p for p in {paths!r} if p not in sys.path]

from tests.onnx_plan import TritonPythonModel  # noqa: E402,F401
"""


def stand_in_plans(repo: Path, onnx_dir: Path) -> list[str]:
    """Replace every ``tensorrt_plan`` model in ``repo`` by its onnxruntime stand-in; return their names."""
    replaced = []
    for path in sorted(repo.glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        if config.platform != "tensorrt_plan":
            continue
        config.platform, config.backend = "", "python"
        del config.instance_group[:]
        config.instance_group.add(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
        (version,) = config.version_policy.specific.versions
        path.write_text(text_format.MessageToString(config))
        shutil.copy(onnx_dir / f"{config.name}.onnx", path.parent / str(version) / "model.onnx")
        (path.parent / str(version) / "model.py").write_text(MODEL_PY.format(paths=list(default_python_paths())))
        replaced.append(config.name)
    return replaced


class TritonPythonModel:
    """One request at a time through an onnxruntime session, tensors by the config's names."""

    def initialize(self, args: dict) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        onnx = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the test machine's few cores are shared with Triton and the gateways
        self.session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            results = self.session.run(self.outputs, feed)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(n, r) for n, r in zip(self.outputs, results)]
                )
            )
        return responses
