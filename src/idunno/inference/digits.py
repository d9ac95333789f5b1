"""The `digits` dataset and two small classifiers trained on it for real, exported to ONNX.

Data: scikit-learn's bundled copy of the UCI handwritten digits, 1,797 8x8 images with pixel
values 0..16, in the order scikit-learn ships them; query id i is row i (0..1796). A query is
stored as 64 bytes (one per pixel, row-major), which `preprocess_digits` turns back into features.

Models (trained on a seeded stratified 75/25 split, single-threaded so the weights do not depend
on the machine's core count):
  digits_logreg  StandardScaler + LogisticRegression
  digits_mlp     StandardScaler + MLPClassifier (one hidden layer of 64 ReLU units)
Exported with skl2onnx (ZipMap off), each ONNX model has:
  input  "input"          float32 [N, 64], raw pixel values 0..16 (the scaler is in the graph)
  output "label"          int64 [N], the predicted digit
  output "probabilities"  float32 [N, 10], class probabilities (argmax = label)
and metadata_props with the held-out test accuracy (`idunno.test_accuracy`), the test size and
the seed, so a stored model proves its own accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from onnx import helper

NUM_FEATURES: Final = 64
NUM_CLASSES: Final = 10
MAX_PIXEL: Final = 16
TEST_FRACTION: Final = 0.25
# The ai.onnx.ml opset 3 exists since onnxruntime 1.9; the default domain matches the zoo.
TARGET_OPSET: Final = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True, slots=True)
class DigitsModel:
    """A fitted model, its ONNX export and its accuracy on the held-out split."""

    name: str
    estimator: Any  # a fitted sklearn Pipeline (scikit-learn has no type stubs)
    test_accuracy: float
    onnx_bytes: bytes


def digits_dataset() -> tuple[np.ndarray, np.ndarray]:
    """(X float32 [1797, 64] with values 0..16, y int64 [1797]); row i is query id i."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return np.asarray(data.data, dtype=np.float32), np.asarray(data.target, dtype=np.int64)


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train row indices, test row indices): a stratified 75/25 split fixed by the seed."""
    from sklearn.model_selection import train_test_split

    _, y = digits_dataset()
    train, test = train_test_split(
        np.arange(len(y)), test_size=TEST_FRACTION, random_state=seed, stratify=y
    )
    return np.sort(train), np.sort(test)


def _estimators(seed: int) -> dict[str, Callable[[], Any]]:
    """Factories for the two pipelines (settings chosen to converge without warnings)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "digits_logreg": lambda: make_pipeline(
            StandardScaler(), LogisticRegression(C=0.1, max_iter=1000)
        ),
        "digits_mlp": lambda: make_pipeline(
            StandardScaler(),
            MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-2, max_iter=500, random_state=seed),
        ),
    }


def _export(name: str, estimator: Any, accuracy: float, n_test: int, seed: int) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    model = convert_sklearn(
        estimator,
        name=name,
        initial_types=[("input", FloatTensorType([None, NUM_FEATURES]))],
        options={"zipmap": False},  # a plain [N, 10] tensor instead of a list of dicts
        target_opset=TARGET_OPSET,
    )
    model.producer_name = "idunno"
    props = {
        "idunno.model": name,
        "idunno.trained": "true",
        "idunno.seed": str(seed),
        "idunno.preprocessing": "digits",
        "idunno.test_accuracy": f"{accuracy:.6f}",
        "idunno.test_size": str(n_test),
        "idunno.note": f"trained on scikit-learn digits; held-out accuracy {accuracy:.4f}",
    }
    helper.set_model_props(model, props)
    data: bytes = model.SerializeToString()
    return data


def build_digits_models(
    seed: int = 0, only: Collection[str] | None = None
) -> dict[str, DigitsModel]:
    """Fit the models (both, or those named in `only`) on the training split and export them;
    a few seconds in all, most of it the MLP."""
    from threadpoolctl import threadpool_limits

    x, y = digits_dataset()
    train, test = digits_split(seed)
    models: dict[str, DigitsModel] = {}
    # One BLAS thread: faster on this small data and the same weights on any machine.
    with threadpool_limits(limits=1):
        for name, make in _estimators(seed).items():
            if only is not None and name not in only:
                continue
            estimator = make().fit(x[train], y[train])
            accuracy = float(estimator.score(x[test], y[test]))
            data = _export(name, estimator, accuracy, len(test), seed)
            models[name] = DigitsModel(name, estimator, accuracy, data)
    return models


def train_digits_models(seed: int = 0, only: Collection[str] | None = None) -> dict[str, bytes]:
    """{"digits_logreg": ONNX bytes, "digits_mlp": ONNX bytes} (or those in `only`); the test
    accuracy is in each model's metadata (`idunno.zoo.read_metadata(b)["idunno.test_accuracy"]`)."""
    return {name: m.onnx_bytes for name, m in build_digits_models(seed, only).items()}


# --- queries ---------------------------------------------------------------------------------


def digit_items() -> Iterator[tuple[str, bytes]]:
    """Every digit as (query id "0".."1796", 64 bytes of pixel values 0..16)."""
    x, _ = digits_dataset()
    for i, row in enumerate(x.astype(np.uint8)):
        yield str(i), row.tobytes()


def decode_digit(data: bytes, item: str = "digit") -> np.ndarray:
    """64 bytes -> float32 [64]; ValueError naming `item` if the bytes are not a digit."""
    if len(data) != NUM_FEATURES:
        raise ValueError(f"digit {item!r}: expected {NUM_FEATURES} bytes, got {len(data)}")
    pixels = np.frombuffer(data, dtype=np.uint8)
    if int(pixels.max()) > MAX_PIXEL:
        raise ValueError(f"digit {item!r}: pixel values must be 0..{MAX_PIXEL}")
    return pixels.astype(np.float32)


def preprocess_digits(items: Sequence[bytes], ids: Sequence[str] | None = None) -> np.ndarray:
    """A batch of stored digits as the models' float32 [N, 64] input."""
    if ids is not None and len(ids) != len(items):
        raise ValueError(f"{len(ids)} ids for {len(items)} digits")
    batch = np.empty((len(items), NUM_FEATURES), dtype=np.float32)
    for i, data in enumerate(items):
        batch[i] = decode_digit(data, ids[i] if ids is not None else f"item {i}")
    return batch
