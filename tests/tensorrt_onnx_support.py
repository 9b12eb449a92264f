"""Which ONNX operators TensorRT 10.0's ONNX parser takes, and on which input types: the rows of
onnx/onnx-tensorrt's operator table (docs/operators.md at 96e7811, "TensorRT 10.0 supports
operators in the inclusive range of opset 9 to opset 20") for the operators our exported graphs
use. TensorRT cannot run here, so tests/test_export.py checks each exported graph against these
facts instead; an operator not listed fails that test until someone looks it up there.

UINT8 appears only under Cast: TensorRT takes a UINT8 network input only into a Cast.
"""

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
