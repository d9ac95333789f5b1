"""The built-in model zoo, generated offline and deterministically (nothing is downloaded).

`resnet18` and `alexnet` are the torchvision ImageNet architectures built node by node with
`onnx.helper`, with seeded random weights. THE WEIGHTS ARE UNTRAINED: these models carry the true
compute cost of ResNet18 and AlexNet (same layers, shapes and FLOPs) but their labels mean
nothing. `digits_logreg` and `digits_mlp` are trained for real on scikit-learn's bundled digits
data (see `idunno.inference.digits`), so their accuracy can be checked.

Graph contract (zoo models): one input "input" float32 NCHW [N, 3, 224, 224] with a dynamic batch
dimension N, one output "logits" float32 [N, 1000]; opset 17, IR version 8.

Deliberate differences from the torchvision modules, none of which changes the compute:
- BatchNorm is folded into the preceding convolution (a conv with a bias), as an exporter with
  constant folding would do; the folded weights are drawn directly.
- AlexNet's AdaptiveAvgPool2d((6, 6)) is omitted: with a 224x224 input the last feature map is
  already 6x6, so the pool is the identity.
- Dropout is omitted (it is the identity at inference).

Each model's metadata_props carry `idunno.*` keys (model, trained, seed, preprocessing, ...) so a
model file stored in the cluster describes itself; `read_metadata` returns them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET: Final = 17
IR_VERSION: Final = 8  # the IR version that goes with opset 17; any recent runtime loads it
INPUT_NAME: Final = "input"
OUTPUT_NAME: Final = "logits"
IMAGE_SIZE: Final = 224
IMAGENET_CLASSES: Final = 1000
UNTRAINED_NOTE: Final = (
    "weights are seeded random (UNTRAINED): true compute cost, meaningless labels"
)

# A residual branch's last conv is scaled down (like a BatchNorm gamma below 1) so that the
# variance of x + f(x) grows slowly through 8 blocks and the logits stay O(1)..O(10).
_RESIDUAL_GAIN: Final = 0.5


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a worker needs to feed a model and read its answer."""

    name: str
    input_name: str
    input_shape: tuple[int | None, ...]  # None: dynamic (the batch dimension)
    output_name: str  # a float32 [N, num_classes] tensor; the answer is its argmax
    preprocessing: str  # "imagenet" (JPEG -> NCHW, see images.py) or "digits" (see digits.py)
    num_classes: int
    labels: tuple[str, ...]
    trained: bool
    description: str


def _imagenet_info(name: str, description: str) -> ModelInfo:
    return ModelInfo(
        name=name,
        input_name=INPUT_NAME,
        input_shape=(None, 3, IMAGE_SIZE, IMAGE_SIZE),
        output_name=OUTPUT_NAME,
        preprocessing="imagenet",
        num_classes=IMAGENET_CLASSES,
        labels=tuple(f"class_{i}" for i in range(IMAGENET_CLASSES)),
        trained=False,
        description=f"{description}; {UNTRAINED_NOTE}",
    )


def _digits_info(name: str, description: str) -> ModelInfo:
    return ModelInfo(
        name=name,
        input_name="input",
        input_shape=(None, 64),
        output_name="probabilities",  # skl2onnx also gives "label" int64 [N]
        preprocessing="digits",
        num_classes=10,
        labels=tuple(str(d) for d in range(10)),
        trained=True,
        description=f"{description}, trained on scikit-learn's digits (8x8, values 0..16)",
    )


MODEL_INFO: Final[Mapping[str, ModelInfo]] = MappingProxyType(
    {
        "resnet18": _imagenet_info("resnet18", "ResNet18 (torchvision architecture, 11.7M params)"),
        "alexnet": _imagenet_info("alexnet", "AlexNet (torchvision architecture, 61.1M params)"),
        "digits_logreg": _digits_info("digits_logreg", "StandardScaler + LogisticRegression"),
        "digits_mlp": _digits_info("digits_mlp", "StandardScaler + MLP (64 hidden units)"),
    }
)


# --- graph building --------------------------------------------------------------------------


class _GraphBuilder:
    """Appends nodes and seeded initializers in a fixed order, so the bytes depend on the seed
    alone. Names are numbered in order (conv1, relu2, ...), which keeps them unique. One use."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        # Weights go straight into the final message: make_graph/make_model would copy ~250 MB.
        self._model = onnx.ModelProto()
        self._count = 0

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{kind}{self._count}"

    def _param(self, name: str, shape: tuple[int, ...], std: float) -> str:
        values = self._rng.standard_normal(shape, dtype=np.float32)
        values *= np.float32(std)
        tensor = self._model.graph.initializer.add()
        tensor.name = name
        tensor.data_type = TensorProto.FLOAT
        tensor.dims.extend(shape)
        tensor.raw_data = values.astype("<f4", copy=False).tobytes()  # ONNX is little-endian
        return name

    def _node(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        self._model.graph.node.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def conv(
        self, x: str, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, gain: float = 1.0
    ) -> str:
        """Conv with a bias (BatchNorm folded in); Kaiming-normal weights (fan_in, ReLU)."""
        name = self._name("conv")
        std = gain * math.sqrt(2.0 / (cin * k * k))
        w = self._param(f"{name}.weight", (cout, cin, k, k), std)
        b = self._param(f"{name}.bias", (cout,), 0.01)
        attrs = {"kernel_shape": [k, k], "strides": [stride, stride], "pads": [pad] * 4}
        return self._node("Conv", [x, w, b], name, **attrs)

    def gemm(self, x: str, fan_in: int, fan_out: int, relu_follows: bool) -> str:
        """Fully connected layer, weight [out, in] as in torch.nn.Linear (transB=1)."""
        name = self._name("fc")
        std = math.sqrt((2.0 if relu_follows else 1.0) / fan_in)
        w = self._param(f"{name}.weight", (fan_out, fan_in), std)
        b = self._param(f"{name}.bias", (fan_out,), 0.01)
        return self._node("Gemm", [x, w, b], name, transB=1)

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        return self._node(op_type, inputs, output or self._name(op_type.lower()), **attrs)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def maxpool(self, x: str, k: int, stride: int, pad: int = 0) -> str:
        return self.op(
            "MaxPool", [x], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4
        )

    def model(self, name: str, seed: int, output: str, doc: str) -> bytes:
        """Finish the model (dynamic batch "N") and serialize it."""
        model = self._model
        graph = model.graph
        graph.name = name
        graph.doc_string = doc
        shape: list[str | int] = ["N", 3, IMAGE_SIZE, IMAGE_SIZE]
        graph.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, shape))
        out_shape: list[str | int] = ["N", IMAGENET_CLASSES]
        graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape))
        model.ir_version = IR_VERSION
        model.opset_import.append(helper.make_opsetid("", OPSET))
        model.producer_name = "idunno"
        model.doc_string = doc
        props = {
            "idunno.model": name,
            "idunno.trained": "false",
            "idunno.seed": str(seed),
            "idunno.preprocessing": "imagenet",
            "idunno.note": UNTRAINED_NOTE,
        }
        helper.set_model_props(model, props)
        data: bytes = model.SerializeToString()
        return data


# --- ResNet18 ----------------------------------------------------------------------------------


def _basic_block(g: _GraphBuilder, x: str, cin: int, cout: int, stride: int) -> str:
    """torchvision BasicBlock: conv3x3(stride)-bn-relu-conv3x3-bn, + shortcut, relu."""
    y = g.relu(g.conv(x, cin, cout, 3, stride=stride, pad=1))
    y = g.conv(y, cout, cout, 3, pad=1, gain=_RESIDUAL_GAIN)
    # Downsample (1x1 conv + bn) where the shape changes, as torchvision does.
    shortcut = x if stride == 1 and cin == cout else g.conv(x, cin, cout, 1, stride=stride)
    return g.relu(g.op("Add", [y, shortcut]))


def build_resnet18(seed: int = 0) -> bytes:
    """ResNet18 (torchvision layout) with seeded, UNTRAINED weights, as ONNX bytes."""
    g = _GraphBuilder(seed)
    x = g.relu(g.conv(INPUT_NAME, 3, 64, 7, stride=2, pad=3))
    x = g.maxpool(x, 3, 2, pad=1)
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        x = _basic_block(g, x, cin, cout, stride)
        x = _basic_block(g, x, cout, cout, 1)
        cin = cout
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    logits = g.gemm(x, 512, IMAGENET_CLASSES, relu_follows=False)
    g.op("Identity", [logits], output=OUTPUT_NAME)
    return g.model("resnet18", seed, OUTPUT_NAME, f"ResNet18; {UNTRAINED_NOTE}")


# --- AlexNet -----------------------------------------------------------------------------------


def build_alexnet(seed: int = 0) -> bytes:
    """AlexNet (torchvision layout) with seeded, UNTRAINED weights, as ONNX bytes."""
    g = _GraphBuilder(seed)
    x = g.relu(g.conv(INPUT_NAME, 3, 64, 11, stride=4, pad=2))  # 55x55
    x = g.maxpool(x, 3, 2)  # 27x27
    x = g.maxpool(g.relu(g.conv(x, 64, 192, 5, pad=2)), 3, 2)  # 13x13
    x = g.relu(g.conv(x, 192, 384, 3, pad=1))
    x = g.relu(g.conv(x, 384, 256, 3, pad=1))
    x = g.maxpool(g.relu(g.conv(x, 256, 256, 3, pad=1)), 3, 2)  # 6x6: AdaptiveAvgPool is identity
    x = g.op("Flatten", [x], axis=1)  # 256*6*6 = 9216
    x = g.relu(g.gemm(x, 9216, 4096, relu_follows=True))
    x = g.relu(g.gemm(x, 4096, 4096, relu_follows=True))
    logits = g.gemm(x, 4096, IMAGENET_CLASSES, relu_follows=False)
    g.op("Identity", [logits], output=OUTPUT_NAME)
    return g.model("alexnet", seed, OUTPUT_NAME, f"AlexNet; {UNTRAINED_NOTE}")


# --- lookup ------------------------------------------------------------------------------------


def build_model(name: str, seed: int = 0) -> bytes:
    """ONNX bytes of the zoo model `name` (see MODEL_INFO). The digits models are trained here,
    which takes about a second."""
    if name == "resnet18":
        return build_resnet18(seed)
    if name == "alexnet":
        return build_alexnet(seed)
    if name in MODEL_INFO:
        from idunno.inference.digits import train_digits_models  # scikit-learn loads slowly

        return train_digits_models(seed, only=(name,))[name]
    known = ", ".join(MODEL_INFO)
    raise ValueError(f"unknown model {name!r}: choose one of {known} or give an ONNX file")


def read_metadata(model_bytes: bytes) -> dict[str, str]:
    """The model's metadata_props (the zoo writes `idunno.*` keys), without loading weights
    into a runtime."""
    model = _parse(model_bytes)
    return {p.key: p.value for p in model.metadata_props}


def _parse(model_bytes: bytes) -> onnx.ModelProto:
    try:
        return onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # protobuf raises its own DecodeError, not a ValueError
        raise ValueError(f"not an ONNX model ({exc}): give a .onnx file") from exc


# --- user models -------------------------------------------------------------------------------


def _dims(value: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    shape = value.type.tensor_type.shape
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in shape.dim)


@dataclass(frozen=True)
class ModelIO:
    """The tensors of a single-input classifier: what every caller checks first."""

    model: onnx.ModelProto
    input_name: str
    input_shape: tuple[int | None, ...]
    output_name: str | None  # None: no float32 [N, C] output (see require_output)
    num_classes: int  # 0: only known after the first run

    def require_output(self, name: str) -> str:
        if self.output_name is None:
            raise ValueError(f"{name}: needs a float32 [N, classes] output (scores per class)")
        return self.output_name


def model_io(model_bytes: bytes, name: str = "model") -> ModelIO:
    """Parse a model and find its one float32 input and its first float32 [N, C] output.
    Raises ValueError naming what does not fit; callers check the input shape, then call
    require_output, so the first problem reported is the input's."""
    model = _parse(model_bytes)
    weights = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in weights]
    if len(inputs) != 1:
        raise ValueError(f"{name}: needs exactly one input tensor, has {len(inputs)}")
    (inp,) = inputs
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError(f"{name}: input {inp.name!r} must be float32")
    outputs = [
        v
        for v in model.graph.output
        if v.type.tensor_type.elem_type == TensorProto.FLOAT and len(_dims(v)) == 2
    ]
    if not outputs:
        return ModelIO(model, inp.name, _dims(inp), None, 0)
    return ModelIO(model, inp.name, _dims(inp), outputs[0].name, _dims(outputs[0])[1] or 0)


def inspect_model(model_bytes: bytes, name: str = "model") -> ModelInfo:
    """Describe a user's ONNX classifier: one float32 input, either NCHW images [N, 3, 224, 224]
    (H, W may be dynamic; "imagenet" preprocessing) or [N, 64] digits features, and a float32
    [N, C] output (the first such output is the answer). The batch dimension may be fixed or
    dynamic. Raises ValueError naming what does not fit."""
    io = model_io(model_bytes, name)
    model, in_shape, classes = io.model, io.input_shape, io.num_classes
    if len(in_shape) == 4 and in_shape[1] == 3:
        if any(d not in (None, IMAGE_SIZE) for d in in_shape[2:]):
            raise ValueError(f"{name}: input shape {in_shape}: images are fed as 224x224")
        preprocessing = "imagenet"
    elif in_shape[1:] == (64,):
        preprocessing = "digits"
    else:
        raise ValueError(
            f"{name}: input shape {in_shape} is neither [N, 3, H, W] images nor [N, 64] digits"
        )
    output_name = io.require_output(name)
    meta = {p.key: p.value for p in model.metadata_props}
    return ModelInfo(
        name=name,
        input_name=io.input_name,
        input_shape=in_shape,
        output_name=output_name,
        preprocessing=preprocessing,
        num_classes=classes,
        labels=tuple(f"class_{i}" for i in range(classes)),
        trained=meta.get("idunno.trained", "true") != "false",
        description=meta.get("idunno.note", model.doc_string or "user ONNX model"),
    )
