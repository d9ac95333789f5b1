"""The offline model zoo, the digits models and the sample images (idunno.inference).

Builds resnet18 and alexnet once per module (alexnet is 244 MB) and the digits models once; the
whole file runs in about 20 s on 2 cores.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest
from onnx import TensorProto, helper
from PIL import Image

from idunno.inference import digits, images, zoo
from idunno.inference.digits import DigitsModel
from idunno.inference.images import ImageDecodeError, preprocess_imagenet, sample_images

BUILDERS: dict[str, Callable[[int], bytes]] = {
    "resnet18": zoo.build_resnet18,
    "alexnet": zoo.build_alexnet,
}
# torchvision's parameter counts; ours fold BatchNorm (weight+bias per channel) into one conv
# bias per channel, so ResNet18 has 4,800 fewer (the BN channels: 64+256+640+1280+2560).
TORCHVISION_PARAMS = {"resnet18": 11_689_512 - 4_800, "alexnet": 61_100_840}


def _session(model: bytes) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def zoo_models() -> dict[str, bytes]:
    return {name: build(0) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def digits_models() -> dict[str, DigitsModel]:
    return digits.build_digits_models(seed=0)


@pytest.fixture(scope="module")
def photo_batch() -> np.ndarray:
    return preprocess_imagenet([data for _, data in sample_images(4, seed=7)])


# --- resnet18 / alexnet ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BUILDERS))
def test_same_seed_same_bytes_other_seed_other_bytes(
    name: str, zoo_models: dict[str, bytes]
) -> None:
    digest = hashlib.sha256(zoo_models[name]).hexdigest()
    assert hashlib.sha256(BUILDERS[name](0)).hexdigest() == digest
    assert hashlib.sha256(BUILDERS[name](1)).hexdigest() != digest


@pytest.mark.parametrize("name", list(BUILDERS))
def test_graph_is_valid_with_torchvision_parameter_count(
    name: str, zoo_models: dict[str, bytes]
) -> None:
    model = onnx.load_model_from_string(zoo_models[name])
    onnx.checker.check_model(model, full_check=True)  # full_check: strict shape inference too
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert params == TORCHVISION_PARAMS[name]
    assert [o.version for o in model.opset_import] == [zoo.OPSET]
    meta = zoo.read_metadata(zoo_models[name])
    assert meta["idunno.trained"] == "false"
    assert "UNTRAINED" in meta["idunno.note"]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_runs_at_batch_1_and_4_with_finite_logits(
    name: str, zoo_models: dict[str, bytes], photo_batch: np.ndarray
) -> None:
    info = zoo.MODEL_INFO[name]
    session = _session(zoo_models[name])
    (one,) = session.run([info.output_name], {info.input_name: photo_batch[:1]})
    (four,) = session.run([info.output_name], {info.input_name: photo_batch})
    assert one.shape == (1, 1000)
    assert four.shape == (4, 1000)
    assert four.dtype == np.float32
    assert np.isfinite(four).all()
    np.testing.assert_allclose(one[0], four[0], rtol=1e-3, atol=1e-3)  # batching changes nothing
    assert not np.allclose(four[0], four[1])  # the input matters


def test_model_info_says_untrained_zoo_and_trained_digits() -> None:
    for name in BUILDERS:
        info = zoo.MODEL_INFO[name]
        assert (info.trained, info.num_classes, len(info.labels)) == (False, 1000, 1000)
        assert info.input_shape == (None, 3, 224, 224)
        assert info.preprocessing == "imagenet"
        assert "UNTRAINED" in info.description
    for name in ("digits_logreg", "digits_mlp"):
        assert zoo.MODEL_INFO[name].trained
        assert zoo.MODEL_INFO[name].output_name == "probabilities"


def test_build_model_names_the_choices_for_an_unknown_model() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'vgg16'.*resnet18"):
        zoo.build_model("vgg16")


# --- user models -------------------------------------------------------------------------------


def _tiny_classifier(batch: int | str) -> bytes:
    """A user's classifier with a fixed or dynamic batch: mean colour -> 3 scores."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["pixels"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["scores"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [batch, 3, 224, 224])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    data: bytes = model.SerializeToString()
    return data


@pytest.mark.parametrize(("batch", "expected"), [(2, 2), ("batch", None)])
def test_user_classifier_with_fixed_or_dynamic_batch(
    batch: int | str, expected: int | None, photo_batch: np.ndarray
) -> None:
    model = _tiny_classifier(batch)
    info = zoo.inspect_model(model, "mine.onnx")
    assert info.input_shape == (expected, 3, 224, 224)
    assert (info.input_name, info.output_name, info.num_classes) == ("pixels", "scores", 3)
    assert (info.preprocessing, info.trained) == ("imagenet", True)
    (scores,) = _session(model).run([info.output_name], {info.input_name: photo_batch[:2]})
    assert scores.shape == (2, 3)


def test_inspect_rejects_what_is_not_a_classifier() -> None:
    with pytest.raises(ValueError, match="not an ONNX model"):
        zoo.inspect_model(b"certainly not protobuf \xff\xff", "junk.onnx")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "ints",
        [helper.make_tensor_value_info("x", TensorProto.INT64, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [None, 64])],
    )
    with pytest.raises(ValueError, match=r"ints\.onnx: input 'x' must be float32"):
        zoo.inspect_model(helper.make_model(graph).SerializeToString(), "ints.onnx")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 299, 299])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 299, 299])],
    )
    with pytest.raises(ValueError, match=r"big\.onnx: input shape .* fed as 224x224"):
        zoo.inspect_model(helper.make_model(graph).SerializeToString(), "big.onnx")


# --- digits ------------------------------------------------------------------------------------


def test_digits_dataset_is_stable() -> None:
    x, y = digits.digits_dataset()
    assert (x.shape, y.shape) == ((1797, 64), (1797,))
    assert x.dtype == np.float32
    assert (x.min(), x.max(), set(y.tolist())) == (0.0, 16.0, set(range(10)))
    x2, y2 = digits.digits_dataset()
    assert np.array_equal(x, x2)
    assert np.array_equal(y, y2)
    train, test = digits.digits_split(0)
    assert len(test) == 450
    assert not set(train.tolist()) & set(test.tolist())


@pytest.mark.parametrize("name", ["digits_logreg", "digits_mlp"])
def test_digits_model_is_accurate_and_onnx_agrees_with_sklearn(
    name: str, digits_models: dict[str, DigitsModel]
) -> None:
    m = digits_models[name]
    x, y = digits.digits_dataset()
    _, test = digits.digits_split(0)
    assert m.test_accuracy >= 0.9
    assert zoo.read_metadata(m.onnx_bytes)["idunno.test_accuracy"] == f"{m.test_accuracy:.6f}"
    info = zoo.MODEL_INFO[name]
    labels, probs = _session(m.onnx_bytes).run(["label", info.output_name], {"input": x[test]})
    assert probs.shape == (len(test), 10)
    assert np.array_equal(labels, m.estimator.predict(x[test]))
    assert np.array_equal(probs.argmax(axis=1), labels)
    np.testing.assert_allclose(probs, m.estimator.predict_proba(x[test]), atol=1e-4)
    assert float((labels == y[test]).mean()) == pytest.approx(m.test_accuracy)
    assert zoo.inspect_model(m.onnx_bytes, name).preprocessing == "digits"


def test_train_digits_models_returns_onnx_bytes(digits_models: dict[str, DigitsModel]) -> None:
    # train_digits_models(0) retrains; the same seed gives the same predictions.
    trained = digits.train_digits_models(0)
    assert set(trained) == set(digits_models) == {"digits_logreg", "digits_mlp"}
    x, _ = digits.digits_dataset()
    for name, data in trained.items():
        (mine,) = _session(data).run(["label"], {"input": x})
        (theirs,) = _session(digits_models[name].onnx_bytes).run(["label"], {"input": x})
        assert np.array_equal(mine, theirs)


def test_digit_items_round_trip_and_bad_items_are_named() -> None:
    items = list(digits.digit_items())
    x, _ = digits.digits_dataset()
    assert [i for i, _ in items[:3]] == ["0", "1", "2"]
    assert items[-1][0] == "1796"
    batch = digits.preprocess_digits([d for _, d in items[:5]], [i for i, _ in items[:5]])
    assert np.array_equal(batch, x[:5])
    with pytest.raises(ValueError, match="digit '7': expected 64 bytes, got 3"):
        digits.preprocess_digits([items[0][1], b"abc"], ["0", "7"])
    with pytest.raises(ValueError, match=r"digit 'item 0': pixel values must be 0\.\.16"):
        digits.preprocess_digits([bytes([200]) * 64])


# --- sample images -----------------------------------------------------------------------------


def test_sample_images_are_distinct_224_jpegs_and_deterministic() -> None:
    first = list(sample_images(12, seed=3))
    assert [i for i, _ in first[:2]] == ["img_000000.jpg", "img_000001.jpg"]
    assert len({data for _, data in first}) == 12
    for _, data in first:
        with Image.open(io.BytesIO(data)) as img:
            assert (img.format, img.size, img.mode) == ("JPEG", (224, 224), "RGB")
    assert list(sample_images(12, seed=3)) == first
    assert list(sample_images(5, seed=3)) == first[:5]  # a larger count extends a smaller one
    assert not {data for _, data in sample_images(12, seed=4)} & {data for _, data in first}
    assert list(sample_images(0)) == []
    with pytest.raises(ValueError, match="count must be >= 0"):
        list(sample_images(-1))


def _encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_preprocess_shape_dtype_and_normalization() -> None:
    mean_rgb = tuple(round(255 * m) for m in images.IMAGENET_MEAN)
    flat = _encode(Image.new("RGB", (224, 224), mean_rgb), "PNG")  # lossless
    white = _encode(Image.new("RGB", (224, 224), (255, 255, 255)), "PNG")
    batch = preprocess_imagenet([flat, white])
    assert batch.shape == (2, 3, 224, 224)
    assert batch.dtype == np.float32
    assert batch.flags.c_contiguous
    assert np.abs(batch[0]).max() < 0.01  # the mean colour normalizes to ~0
    expected_white = (1 - images.IMAGENET_MEAN) / images.IMAGENET_STD
    np.testing.assert_allclose(batch[1].mean(axis=(1, 2)), expected_white, rtol=1e-5)


def test_preprocess_resizes_and_crops_other_sizes_and_modes() -> None:
    # Left third red, rest blue, 480x320: resized to 384x256 the red band is 128 wide, and the
    # center crop starts at column (384 - 224) / 2 = 80, so 48 red columns remain.
    pixels = np.zeros((320, 480, 3), dtype=np.uint8)
    pixels[:, :160] = (255, 0, 0)
    pixels[:, 160:] = (0, 0, 255)
    grey = _encode(Image.new("L", (300, 600), 128))
    batch = preprocess_imagenet([_encode(Image.fromarray(pixels), "PNG"), grey])
    assert batch.shape == (2, 3, 224, 224)
    red = batch[0, 0] * images.IMAGENET_STD[0] + images.IMAGENET_MEAN[0]
    assert red[:, :44].mean() > 0.95
    assert red[:, 52:].mean() < 0.05
    assert np.allclose(batch[1, 0] * images.IMAGENET_STD[0] + images.IMAGENET_MEAN[0], 0.5, 0.02)


def test_corrupt_image_raises_value_error_naming_the_item() -> None:
    (_, good), (_, other) = sample_images(2)
    truncated = good[: len(good) // 2]
    for bad in (truncated, b"GIF89a nonsense", b""):
        with pytest.raises(ValueError, match=r"cannot decode image 'img_000009\.jpg'"):
            preprocess_imagenet([other, bad], ids=["img_000008.jpg", "img_000009.jpg"])
    with pytest.raises(ImageDecodeError) as caught:
        images.decode_imagenet(truncated, "q42")
    assert caught.value.item == "q42"
    with pytest.raises(ValueError, match="cannot decode image 'item 1'"):
        preprocess_imagenet([good, truncated])
