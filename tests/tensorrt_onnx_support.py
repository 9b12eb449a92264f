"""Which ONNX operators TensorRT 10.0's ONNX parser takes, and on which input types: the rows of
onnx/onnx-tensorrt's operator table (docs/operators.md at 96e7811, "TensorRT 10.0 supports
operators in the inclusive range of opset 9 to opset 20") for the operators our exported graphs
use. TensorRT cannot run here, so tests/test_export.py checks each exported graph against these
facts instead; an operator not listed fails that test until someone looks it up there.

UINT8 appears only under Cast: TensorRT takes a UINT8 network input only into a Cast.
``refused(path)`` lists what a graph has that these rows do not allow.
"""

from pathlib import Path

FLOATS = {"FP32", "FP16", "BF16"}
NUMBERS = FLOATS | {"INT32", "INT64"}
ANY = NUMBERS | {"BOOL"}

INPUT_TYPES: dict[str, set[str]] = {
    "Abs": NUMBERS,
    "Add": NUMBERS,
    "And": {"BOOL"},
    "ArgMax": NUMBERS,
    "Cast": ANY | {"UINT8"},
    "Clip": FLOATS,
    "Concat": ANY,
    "ConstantOfShape": ANY,
    "Conv": FLOATS,
    "Cos": FLOATS,
    "Div": NUMBERS,
    "Equal": NUMBERS,
    "Erf": FLOATS,
    "Exp": FLOATS,
    "Expand": ANY,
    "Gather": ANY,
    "GatherND": ANY,
    "Gemm": FLOATS,
    "Greater": NUMBERS,
    "GreaterOrEqual": NUMBERS,
    "IsNaN": NUMBERS,
    "LayerNormalization": FLOATS,
    "Less": NUMBERS,
    "LessOrEqual": NUMBERS,
    "MatMul": FLOATS,
    "Max": NUMBERS,
    "Mul": NUMBERS,
    "Neg": NUMBERS,
    "Or": {"BOOL"},
    "Pow": FLOATS,
    "Range": NUMBERS,
    "Reciprocal": FLOATS,
    "ReduceL2": NUMBERS,
    "ReduceMean": NUMBERS,
    "ReduceSum": NUMBERS,
    "Reshape": ANY,
    "Shape": ANY,
    "Sigmoid": FLOATS,
    "Sin": FLOATS,
    "Size": ANY,
    "Slice": ANY,
    "Softmax": FLOATS,
    "Sqrt": FLOATS,
    "Squeeze": ANY,
    "Sub": NUMBERS,
    "Transpose": ANY,
    "Unsqueeze": ANY,
    "Where": ANY,
}
OPSETS = range(9, 21)  # the ONNX opsets TensorRT 10.0 parses


_TYPE_NAMES = {"FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16"}


def refused(path: Path) -> list[str]:
    """What in the ONNX graph at ``path`` TensorRT 10.0's parser would not take (weights not loaded)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    (opset,) = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    problems = [] if opset in OPSETS else [f"opset {opset}"]
    graph = model.graph
    types = {t.name: t.type.tensor_type.elem_type for t in [*graph.value_info, *graph.input, *graph.output]}
    types |= {t.name: t.data_type for t in graph.initializer}
    for node in graph.node:
        allowed = INPUT_TYPES.get(node.op_type)
        if allowed is None:
            problems.append(f"{node.op_type} (not in tests/tensorrt_onnx_support.py: look it up)")
            continue
        for name in filter(None, node.input):
            dtype = onnx.TensorProto.DataType.Name(types[name])
            if _TYPE_NAMES.get(dtype, dtype) not in allowed:
                problems.append(f"{node.op_type} on {dtype} input {name}")
    return sorted(set(problems))
