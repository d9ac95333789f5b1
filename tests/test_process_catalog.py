"""`idunno model ...` and `idunno dataset ...` against real `idunno node` processes (one shared
5-node cluster): the built-in zoo (trained digits models with their accuracy, the UNTRAINED
resnet18), a user's ONNX file with labels, corrupt files, sampled photos, a folder of images,
the digits dataset, .npy arrays, and the one-line errors."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

from idunno.inference.catalog import Catalog, DatasetManifest, decode_shard
from idunno.inference.digits import digit_items
from idunno.inference.images import sample_images
from idunno.testing.procs import ProcCluster
from tests.conftest import CliRunner, assert_one_line_error

pytestmark = pytest.mark.process

UNTRAINED = "no (untrained: compute cost only)"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    with ProcCluster(5, tmp_path_factory.mktemp("catalog")) as c:
        yield c


def common(c: ProcCluster) -> list[str]:
    return ["--at", c.nodes["n2"].address, "--key-file", str(c.directory / "cluster.key")]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """stdout of a CLI run that must have succeeded."""
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    out: str = result.stdout
    return out


def catalog(c: ProcCluster) -> Catalog:
    return Catalog(c.client("n4", timeout=10.0))


def row(listing: str, name: str) -> str:
    lines = [line for line in listing.splitlines() if line.split()[:1] == [name]]
    assert len(lines) == 1, listing
    return lines[0]


# --- models -------------------------------------------------------------------------------------


def test_builtin_digits_model_is_listed_as_trained_with_its_accuracy(
    shared: ProcCluster, idunno: CliRunner
) -> None:
    c = shared
    out = ok(idunno("model", "add", "digits_logreg", "--builtin", *common(c)))
    assert "added model digits_logreg: models/digits_logreg.onnx version 1" in out
    assert "trained: yes; test accuracy 0.9" in out
    listing = ok(idunno("model", "list", *common(c)))
    line = row(listing, "digits_logreg")
    assert " yes " in line and " digits " in line and "[N, 64]" in line
    data = json.loads(ok(idunno("model", "list", "--json", *common(c))))
    (record,) = [m for m in data["models"] if m["name"] == "digits_logreg"]
    assert record["trained"] is True
    assert 0.9 < record["test_accuracy"] <= 1.0
    assert f"{record['test_accuracy']:.4f}" in line
    assert record["labels"] == [str(d) for d in range(10)]
    assert (record["preprocess"], record["num_classes"]) == ("digits", 10)
    # The record describes exactly the stored bytes.
    onnx_bytes = catalog(c).get_bytes("models/digits_logreg.onnx", record["version"])
    assert hashlib.sha256(onnx_bytes).hexdigest() == record["sha256"]
    assert len(onnx_bytes) == record["size"]
    # Adding it again replaces it with a new version, and says so.
    out = ok(idunno("model", "add", "digits_logreg", "--builtin", *common(c)))
    assert "version 2" in out and "already existed (its record was version 1)" in out
    detail = ok(idunno("model", "list", "digits_logreg", *common(c)))
    assert "models/digits_logreg.onnx version 2" in detail


def test_resnet18_is_listed_as_untrained(shared: ProcCluster, idunno: CliRunner) -> None:
    c = shared
    out = ok(idunno("model", "add", "resnet18", "--builtin", *common(c), timeout=120))
    assert "UNTRAINED" in out and "trained: NO" in out
    assert "input [N, 3, 224, 224], 1000 classes" in out
    line = row(ok(idunno("model", "list", *common(c))), "resnet18")
    assert UNTRAINED in line and " imagenet " in line
    record = json.loads(ok(idunno("model", "list", "resnet18", "--json", *common(c))))
    assert record["trained"] is False and record["test_accuracy"] is None
    assert record["size"] > 40_000_000 and record["labels"] is None


def test_a_corrupt_model_file_is_a_one_line_error(
    shared: ProcCluster, idunno: CliRunner, tmp_path: Path
) -> None:
    c = shared
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07this is not protobuf" * 100)
    assert_one_line_error(
        idunno("model", "add", "broken", str(bad), *common(c)), str(bad), "not an ONNX model"
    )
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert_one_line_error(idunno("model", "add", "broken", str(empty), *common(c)), "empty")
    stored = {f["name"] for f in c.client("n1").ls()["files"]}
    assert not {"models/broken.onnx", "models/broken.json"} & stored
    assert_one_line_error(idunno("model", "list", "broken", *common(c)), "unknown model 'broken'")


def test_a_user_onnx_classifier_with_labels_and_a_fixed_batch(
    shared: ProcCluster, idunno: CliRunner, tmp_path: Path
) -> None:
    c = shared
    weights = helper.make_tensor("w", TensorProto.FLOAT, [64, 3], [0.5] * 192)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["pixels", "w"], ["scores"])],
        "mine",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "mine.onnx"
    path.write_bytes(model.SerializeToString())
    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\ntwo\n")
    out = ok(idunno("model", "add", "mine", str(path), "--labels", str(labels), *common(c)))
    assert "preprocess digits, input [1, 64], 3 classes" in out
    record = json.loads(ok(idunno("model", "list", "mine", "--json", *common(c))))
    assert record["labels"] == ["zero", "one", "two"]
    assert record["input_shape"] == [1, 64] and record["source"] == "file"
    labels.write_text("zero\none\n")
    assert_one_line_error(
        idunno("model", "add", "mine", str(path), "--labels", str(labels), *common(c)),
        "2 labels for 3 classes",
    )


# --- datasets -----------------------------------------------------------------------------------


def fetch(c: ProcCluster, name: str) -> tuple[DatasetManifest, list[tuple[str, bytes]]]:
    """The manifest and every item, read the way a worker will: shard by shard."""
    cat = catalog(c)
    manifest = cat.dataset(name)
    items = []
    for shard in manifest.shards:
        raw = cat.get_bytes(f"datasets/{name}/{shard.name}", shard.version)
        assert hashlib.sha256(raw).hexdigest() == shard.sha256
        items.extend(decode_shard(raw))
    assert [i for i, _ in items] == list(manifest.item_ids)
    return manifest, items


def test_sampled_photos_are_40_distinct_224px_jpegs(shared: ProcCluster, idunno: CliRunner) -> None:
    c = shared
    out = ok(idunno("dataset", "sample", "photos", "--count", "40", *common(c)))
    assert "added dataset photos: 40 items of kind jpeg" in out
    line = row(ok(idunno("dataset", "list", *common(c))), "photos")
    assert line.split()[1:4] == ["jpeg", "imagenet", "40"]
    manifest, items = fetch(c, "photos")
    assert manifest.count == 40 and manifest.kind == "jpeg"
    assert len({hashlib.sha256(b).digest() for _, b in items}) == 40
    for _, data in items:
        with Image.open(io.BytesIO(data)) as img:
            assert (img.format, img.size) == ("JPEG", (224, 224))
    assert items == list(sample_images(40))  # ids img_000000.jpg ... and the same bytes
    summary = json.loads(ok(idunno("dataset", "list", "--json", *common(c))))
    (photos,) = [d for d in summary["datasets"] if d["name"] == "photos"]
    assert photos["count"] == 40 and "item_ids" not in photos


def _folder(root: Path, order: list[str]) -> dict[str, bytes]:
    made = {}
    for i, rel in enumerate(order):
        buf = io.BytesIO()
        fmt = "PNG" if rel.endswith(".png") else "JPEG"
        Image.new("RGB", (40 + i, 30), (20 * len(rel), 100, 7)).save(buf, format=fmt)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(buf.getvalue())
        made[rel] = buf.getvalue()
    (root / "notes.txt").write_text("not an image")
    return made


def test_a_folder_of_images_keeps_stable_ids(
    shared: ProcCluster, idunno: CliRunner, tmp_path: Path
) -> None:
    c = shared
    names = ["zebra.png", "apple.jpg", "cats/tom.png", "cats/felix.jpeg"]
    made = _folder(tmp_path / "first", names)
    result = idunno("dataset", "add", "mine", str(tmp_path / "first"), *common(c))
    out = ok(result)
    assert "skipped 1 file that is not an image: notes.txt" in result.stderr
    assert "4 items of kind jpeg" in out
    manifest, items = fetch(c, "mine")
    expected = ["apple.jpg", "cats/felix.jpeg", "cats/tom.png", "zebra.png"]
    assert list(manifest.item_ids) == expected
    assert dict(items) == made  # the files' bytes, as they are
    # The same pictures written in another order, elsewhere: the same ids; the name is replaced.
    shutil.rmtree(tmp_path / "first")
    _folder(tmp_path / "second", list(reversed(names)))
    out = ok(idunno("dataset", "add", "mine", str(tmp_path / "second"), *common(c)))
    assert "dataset mine already existed" in out
    again, _ = fetch(c, "mine")
    assert list(again.item_ids) == expected
    assert [s.version for s in again.shards] == [2]


def test_the_digits_dataset_has_1797_items(shared: ProcCluster, idunno: CliRunner) -> None:
    c = shared
    out = ok(idunno("dataset", "add", "digits", "--builtin", *common(c)))
    assert "1797 items of kind digits" in out and "8 shards" in out
    line = row(ok(idunno("dataset", "list", *common(c))), "digits")
    assert line.split()[1:5] == ["digits", "digits", "1797", "8"]
    manifest, items = fetch(c, "digits")
    assert manifest.count == 1797 and manifest.item_shape == (64,)
    assert items == list(digit_items())


def test_an_npy_array_dataset(shared: ProcCluster, idunno: CliRunner, tmp_path: Path) -> None:
    c = shared
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal((300, 10)), rng.integers(0, 9, (5, 10))]
    np.save(tmp_path / "part-a.npy", arrays[0])
    np.save(tmp_path / "part-b.npy", arrays[1])
    out = ok(idunno("dataset", "add", "vectors", str(tmp_path / "*.npy"), *common(c)))
    assert "305 items of kind npy (for models with preprocess none) in 2 shards" in out
    detail = json.loads(ok(idunno("dataset", "list", "vectors", "--json", *common(c))))
    assert detail["item_shape"] == [10] and detail["preprocess"] == "none"
    manifest, items = fetch(c, "vectors")
    assert list(manifest.item_ids) == [str(i) for i in range(305)]
    got = np.stack([np.frombuffer(b, dtype="<f4") for _, b in items])
    assert np.array_equal(got, np.concatenate(arrays).astype(np.float32))


def test_dataset_errors_are_one_line(
    shared: ProcCluster, idunno: CliRunner, tmp_path: Path
) -> None:
    c = shared
    assert_one_line_error(
        idunno("dataset", "list", "never-added", *common(c)), "unknown dataset 'never-added'"
    )
    missing = tmp_path / "nowhere"
    assert_one_line_error(
        idunno("dataset", "add", "x", str(missing), *common(c)), "no such file or folder"
    )
    (tmp_path / "empty").mkdir()
    assert_one_line_error(
        idunno("dataset", "add", "x", str(tmp_path / "empty"), *common(c)), "is empty"
    )
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("a")
    assert_one_line_error(
        idunno("dataset", "add", "x", str(tmp_path / "texts"), *common(c)), "has no images"
    )
    assert_one_line_error(
        idunno("dataset", "sample", "bad/name", "--count", "3", *common(c)),
        "dataset name 'bad/name'",
    )
    stored = {f["name"] for f in c.client("n1").ls()["files"]}
    assert not any(name.startswith("datasets/x/") for name in stored)
