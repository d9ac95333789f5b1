"""Models and datasets in the store (idunno.inference.catalog), without processes: names, shard
encoding, sharding, manifests, model records, local dataset sources, the Catalog logic over an
in-memory store, and the CLI's argument errors (which are found before any node is asked)."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from pathlib import Path
from typing import Any, cast

import msgpack
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from PIL import Image

from idunno.cli.main import main
from idunno.client import Client, ClientError
from idunno.inference import catalog
from idunno.inference.catalog import (
    SHARD_MAX_ITEMS,
    Catalog,
    CatalogError,
    DatasetManifest,
    ModelRecord,
    ShardInfo,
    build_manifest,
    decode_shard,
    describe_model,
    encode_shard,
    item_cost,
    local_items,
    parse_labels,
    scan_local,
    shard_name,
    shards_for,
    validate_name,
)

# --- names --------------------------------------------------------------------------------------

GOOD_NAMES = ["a", "Z", "0", "resnet18", "digits_logreg", "my-model.v2", "A.b_c-d", "x" * 64]
BAD_NAMES = [
    ("", "is empty"),
    ("x" * 65, "65 characters"),
    ("a/b", "not allowed"),
    ("..", "not allowed"),
    (".", "not allowed"),
    (".hidden", "not allowed"),
    ("-flag", "not allowed"),
    ("_x", "not allowed"),
    ("has space", "not allowed"),
    ("tab\there", "not allowed"),
    ("ünïcode", "not allowed"),
    ("a\\b", "not allowed"),
    ("semi;colon", "not allowed"),
    ("new\nline", "not allowed"),
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_pass(name: str) -> None:
    assert validate_name(name, "model") == name
    assert validate_name(name, "dataset") == name


@pytest.mark.parametrize(("name", "why"), BAD_NAMES)
def test_bad_names_are_one_line_errors(name: str, why: str) -> None:
    with pytest.raises(CatalogError) as info:
        validate_name(name, "dataset")
    message = str(info.value)
    assert message.startswith("dataset name ")
    assert why in message
    assert "\n" not in message
    assert "1..64" in message


def test_layout_names() -> None:
    assert catalog.model_file("m") == "models/m.onnx"
    assert catalog.model_record_file("m") == "models/m.json"
    assert catalog.manifest_file("d") == "datasets/d/manifest.json"
    assert catalog.shard_file("d", shard_name(3)) == "datasets/d/shard-00003.bin"
    files = [
        "models/a.json",
        "models/a.onnx",
        "models/b.onnx",
        "models/sub/c.json",
        "datasets/x/manifest.json",
        "datasets/x/shard-00000.bin",
        "datasets/y/z/manifest.json",
        "other/models/q.json",
    ]
    assert catalog.model_names(files) == ["a"]
    assert catalog.dataset_names(files) == ["x"]


# --- shards -------------------------------------------------------------------------------------

items_strategy = st.lists(st.tuples(st.text(max_size=30), st.binary(max_size=300)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(items_strategy)
def test_shard_round_trip(items: list[tuple[str, bytes]]) -> None:
    data = encode_shard(items)
    assert decode_shard(data) == items
    assert encode_shard(decode_shard(data)) == data  # deterministic bytes


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_decode_shard_of_any_bytes_is_items_or_a_catalog_error(data: bytes) -> None:
    try:
        items = decode_shard(data)
    except CatalogError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(isinstance(i, str) and isinstance(b, bytes) for i, b in items)


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        ([["a", b"x"]], "header"),
        ({"idunno_shard": 2, "items": []}, "header"),
        ({"idunno_shard": 1}, "not a list"),
        ({"idunno_shard": 1, "items": [["a", "text, not bytes"]]}, "item 0"),
        ({"idunno_shard": 1, "items": [["a", b"x"], [1, b"x"]]}, "item 1"),
        ({"idunno_shard": 1, "items": [["a", b"x", b"y"]]}, "item 0"),
    ],
)
def test_decode_shard_names_what_is_wrong(obj: Any, why: str) -> None:
    with pytest.raises(CatalogError, match=why):
        decode_shard(msgpack.packb(obj, use_bin_type=True))


def test_decode_shard_of_truncated_bytes() -> None:
    data = encode_shard([("a", b"x" * 100), ("b", b"y" * 100)])
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        with pytest.raises(CatalogError, match="not an idunno shard"):
            decode_shard(data[:cut])
    with pytest.raises(CatalogError):
        decode_shard(data + b"\x00")  # trailing bytes


def test_encode_shard_refuses_wrong_types() -> None:
    with pytest.raises(CatalogError, match="str id, bytes"):
        encode_shard([("a", bytearray(b"x"))])  # type: ignore[list-item]
    with pytest.raises(CatalogError, match="str id, bytes"):
        encode_shard([(1, b"x")])  # type: ignore[list-item]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.text(max_size=5), st.binary(max_size=120)), max_size=60),
    st.integers(1, 7),
    st.integers(1, 400),
)
def test_shards_for_cuts_greedily_within_the_limits(
    items: list[tuple[str, bytes]], max_items: int, max_bytes: int
) -> None:
    shards = list(shards_for(items, max_items, max_bytes))
    assert [i for s in shards for i in s] == items
    assert all(s for s in shards)
    for s in shards:
        assert len(s) <= max_items
        assert len(s) == 1 or sum(item_cost(i) for i in s) <= max_bytes
    for before, after in itertools.pairwise(shards):
        # A shard closes only when the next item would not fit.
        cost = sum(item_cost(i) for i in before)
        assert len(before) == max_items or cost + item_cost(after[0]) > max_bytes


def test_shards_for_defaults() -> None:
    small = [(str(i), b"x" * 10) for i in range(SHARD_MAX_ITEMS * 2 + 1)]
    assert [len(s) for s in shards_for(small)] == [256, 256, 1]
    big = [(str(i), b"x" * (3 << 20)) for i in range(5)]  # 3 MiB items: two per 8 MiB shard
    assert [len(s) for s in shards_for(big)] == [2, 2, 1]
    huge = [("a", b"x" * (9 << 20)), ("b", b"y")]
    assert [len(s) for s in shards_for(huge)] == [1, 1]
    assert list(shards_for([])) == []


# --- manifests ----------------------------------------------------------------------------------


def _shards(counts: list[int]) -> list[ShardInfo]:
    return [ShardInfo(shard_name(i), n, 100 + i, f"{i:064x}", i + 1) for i, n in enumerate(counts)]


def test_manifest_json_round_trip_and_stability() -> None:
    ids = [f"img_{i:06d}.jpg" for i in range(300)]
    m1 = build_manifest("photos", "jpeg", ids, _shards([256, 44]), 1234.5, "sample")
    m2 = build_manifest("photos", "jpeg", list(ids), _shards([256, 44]), 1234.5, "sample")
    assert m1 == m2
    assert json.dumps(m1.to_json(), sort_keys=True) == json.dumps(m2.to_json(), sort_keys=True)
    back = DatasetManifest.from_json(json.loads(json.dumps(m1.to_json())))
    assert back == m1
    assert back.preprocess == "imagenet"
    assert back.shard_names == ["shard-00000.bin", "shard-00001.bin"]
    assert [(s.name, first, n) for s, first, n in back.shard_ranges()] == [
        ("shard-00000.bin", 0, 256),
        ("shard-00001.bin", 256, 44),
    ]
    assert "item_ids" not in back.summary()
    assert back.summary()["count"] == 300
    npy = build_manifest("arr", "npy", ["0", "1"], _shards([2]), 1.0, "f", item_shape=())
    assert DatasetManifest.from_json(npy.to_json()).item_shape == ()


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"item_ids": ["a", "a"], "shards": _shards([2])}, "not unique"),
        ({"item_ids": ["a", "b"], "shards": _shards([1])}, "different number"),
        ({"kind": "png"}, "kind 'png' is unknown"),
        ({"name": "bad name"}, "dataset name"),
        ({"shards": [ShardInfo("shard-00001.bin", 2, 1, "0" * 64, 1)]}, "shard 0 is named"),
        ({"count": 3}, "count 3 but 2 item ids"),
    ],
)
def test_build_manifest_refuses_inconsistent_input(kwargs: dict[str, Any], why: str) -> None:
    args: dict[str, Any] = {
        "name": "d",
        "kind": "jpeg",
        "item_ids": ["a", "b"],
        "shards": _shards([2]),
        "added_at": 1.0,
    }
    args.update(kwargs)
    with pytest.raises(CatalogError, match=why):
        build_manifest(**args)


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: m.pop("shards"),
        lambda m: m.update(count="40"),
        lambda m: m.update(item_ids=[1, 2]),
        lambda m: m.update(shards=["shard-00000.bin"]),
        lambda m: m.update(added_at=True),
        lambda m: m.update(item_shape=[None]),
    ],
)
def test_damaged_manifest_is_a_catalog_error(damage: Any) -> None:
    obj = build_manifest("d", "npy", ["0", "1"], _shards([2]), 1.0, "x", (3,)).to_json()
    damage(obj)
    with pytest.raises(CatalogError, match="damaged"):
        DatasetManifest.from_json(obj)
    with pytest.raises(CatalogError, match="not a JSON object"):
        DatasetManifest.from_json([obj])


# --- models -------------------------------------------------------------------------------------


def _classifier(
    in_shape: list[int | str], classes: int | str = 10, meta: dict[str, str] | None = None
) -> bytes:
    """A tiny float32 classifier: flatten, then a Gemm to `classes` scores."""
    features = 1
    for d in in_shape[1:]:
        assert isinstance(d, int)
        features *= d
    n_out = classes if isinstance(classes, int) else 4
    w = helper.make_tensor("w", TensorProto.FLOAT, [features, n_out], [0.01] * (features * n_out))
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [in_shape[0], classes])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta:
        helper.set_model_props(model, meta)
    data: bytes = model.SerializeToString()
    return data


@pytest.mark.parametrize(
    ("shape", "preprocess"),
    [
        (["N", 64], "digits"),
        ([1, 64], "digits"),  # a fixed batch dimension
        ([8, 64], "digits"),
        (["N", 3, 224, 224], "imagenet"),
        ([1, 3, 224, 224], "imagenet"),
    ],
)
def test_describe_model_infers_the_preprocessing(shape: list[int | str], preprocess: str) -> None:
    data = _classifier(shape)
    record = describe_model(data, "tiny", added_at=5.0)
    assert record.preprocess == preprocess
    assert record.input_shape == tuple(None if isinstance(d, str) else d for d in shape)
    assert (record.num_classes, record.labels, record.trained) == (10, None, True)
    assert record.test_accuracy is None
    assert (record.sha256, record.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert (record.input_name, record.output_name, record.version) == ("x", "scores", 0)
    assert ModelRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_describe_model_preprocess_none_labels_and_metadata() -> None:
    data = _classifier(["N", 10], classes=3, meta={"idunno.test_accuracy": "0.875"})
    with pytest.raises(CatalogError, match="neither"):
        describe_model(data, "raw")  # [N, 10] is neither images nor digits
    record = describe_model(data, "raw", "none", labels=["cat", "dog", "eel"])
    assert (record.preprocess, record.input_shape, record.num_classes) == ("none", (None, 10), 3)
    assert record.labels == ("cat", "dog", "eel")
    assert record.test_accuracy == 0.875
    with pytest.raises(CatalogError, match="2 labels for 3 classes"):
        describe_model(data, "raw", "none", labels=["cat", "dog"])
    digits = _classifier(["N", 64])
    assert describe_model(digits, "d", "none").preprocess == "none"
    with pytest.raises(CatalogError, match="--preprocess imagenet does not fit input shape"):
        describe_model(digits, "d", "imagenet")
    dynamic = _classifier(["N", 3, 224, 224], classes="C")
    assert describe_model(dynamic, "dyn").num_classes == 0
    assert describe_model(dynamic, "dyn", labels=["a", "b"]).num_classes == 2


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "the file is empty"),
        (b"\xff" * 100, "not an ONNX model"),
        (_classifier(["N", 5]), "neither"),
    ],
)
def test_describe_model_refuses_what_does_not_fit(data: bytes, why: str) -> None:
    with pytest.raises(CatalogError, match=why) as info:
        describe_model(data, "m")
    assert "\n" not in str(info.value)


def test_describe_model_untrained_flag_from_metadata() -> None:
    data = _classifier(["N", 64], meta={"idunno.trained": "false"})
    record = describe_model(data, "u")
    assert not record.trained
    assert record.trained_text == "no (untrained: compute cost only)"
    raw = _classifier(["N", 10], meta={"idunno.trained": "false"})
    assert not describe_model(raw, "u", "none").trained


def test_builtin_digits_model_is_trained_with_accuracy() -> None:
    data, record = catalog.builtin_model("digits_logreg")
    assert onnx.load_model_from_string(data).graph.input[0].name == "input"
    assert record.trained and record.source == "builtin"
    assert record.test_accuracy is not None and record.test_accuracy > 0.9
    assert record.labels == tuple(str(d) for d in range(10))
    assert record.preprocess == "digits"
    with pytest.raises(CatalogError, match="not a built-in model"):
        catalog.builtin_model("resnet50")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cat\ndog\n", ("cat", "dog")),
        ("  cat \r\ndog\n\n\n", ("cat", "dog")),
        ("only", ("only",)),
    ],
)
def test_parse_labels(text: str, expected: tuple[str, ...]) -> None:
    assert parse_labels(text) == expected


@pytest.mark.parametrize(
    ("text", "why"), [("", "no labels"), ("\n\n", "no labels"), ("a\n\nb", "line 2")]
)
def test_parse_labels_refuses(text: str, why: str) -> None:
    with pytest.raises(CatalogError, match=why):
        parse_labels(text)


# --- local dataset sources ----------------------------------------------------------------------


def _image(path: Path, fmt: str, colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), colour).save(buf, format=fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _photo_folder(root: Path, order: list[str]) -> dict[str, bytes]:
    """A folder of images written in `order`, plus files that are not images or are hidden."""
    made = {}
    for rel in order:
        fmt = "PNG" if rel.endswith(".png") else "JPEG"
        made[rel] = _image(root / rel, fmt, (len(rel) * 10 % 256, 0, 0))
    (root / "README.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    _image(root / ".thumbs" / "t.png", "PNG", (1, 2, 3))
    return made


def test_folder_ids_are_sorted_relative_paths_whatever_the_creation_order(tmp_path: Path) -> None:
    names = ["b.png", "a.jpg", "sub/c.png", "sub/a.jpeg", "z.PNG"]
    made = _photo_folder(tmp_path / "one", names)
    _photo_folder(tmp_path / "two", list(reversed(names)))
    one, two = scan_local(str(tmp_path / "one")), scan_local(str(tmp_path / "two"))
    assert one.ids == two.ids == ["a.jpg", "b.png", "sub/a.jpeg", "sub/c.png", "z.PNG"]
    assert one.kind == "jpeg" and one.what == "folder"
    assert one.skipped == ("README.txt",)  # hidden files are not even counted
    assert one.count == 5
    assert dict(local_items(one)) == made  # bytes exactly as on disk
    # The same input gives the same manifest (but for the time it was added).
    shards = [ShardInfo(shard_name(0), 5, 1, "0" * 64, 1)]
    m1 = build_manifest("p", one.kind, one.ids, shards, 1.0, one.origin.replace("one", "x"))
    m2 = build_manifest("p", two.kind, two.ids, shards, 1.0, two.origin.replace("two", "x"))
    assert m1 == m2


def test_glob_ids_are_relative_to_the_glob_folder(tmp_path: Path) -> None:
    _photo_folder(tmp_path / "photos", ["a.png", "b.jpg", "deep/c.png"])
    src = scan_local(str(tmp_path / "photos" / "*.png"))
    assert (src.what, src.ids) == ("glob", ["a.png"])
    src = scan_local(str(tmp_path / "photos" / "**" / "*.png"))
    assert src.ids == ["a.png", "deep/c.png"]
    single = scan_local(str(tmp_path / "photos" / "b.jpg"))
    assert (single.what, single.ids) == ("file", ["b.jpg"])


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: p.mkdir(), "is empty"),
        (lambda p: None, "no such file or folder"),
        (lambda p: (p.mkdir(), (p / "a.txt").write_text("x")), "has no images"),
        (lambda p: (p.mkdir(), (p / ".hidden.png").write_text("x")), "is empty"),
    ],
)
def test_scan_errors(tmp_path: Path, make: Any, why: str) -> None:
    target = tmp_path / "data"
    make(target)
    with pytest.raises(CatalogError, match=why) as info:
        scan_local(str(target))
    assert "\n" not in str(info.value)


def test_glob_matching_nothing(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no files match"):
        scan_local(str(tmp_path / "*.jpg"))


def test_npy_rows_are_float32_items_counted_across_files(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.int64).reshape(3, 2, 2)
    b = np.linspace(0, 1, 8, dtype=np.float64).reshape(2, 2, 2)
    np.save(tmp_path / "b.npy", b)
    np.save(tmp_path / "a.npy", a)
    (tmp_path / "notes.txt").write_text("skipped")
    src = scan_local(str(tmp_path))
    assert (src.kind, src.count, src.item_shape, src.rows) == ("npy", 5, (2, 2), (3, 2))
    assert src.skipped == ("notes.txt",)
    assert src.ids == ["0", "1", "2", "3", "4"]
    items = list(local_items(src))
    assert [i for i, _ in items] == src.ids
    rows = np.concatenate([a, b]).astype("<f4")
    for (_, data), row in zip(items, rows, strict=True):
        assert np.array_equal(np.frombuffer(data, dtype="<f4").reshape(2, 2), row)
    assert src.total_bytes == 5 * 16


@pytest.mark.parametrize(
    ("arrays", "why"),
    [
        ({"a.npy": np.zeros((2, 3)), "b.npy": np.zeros((2, 4))}, "same shape after axis 0"),
        ({"a.npy": np.array(5.0)}, "0-dimensional"),
        ({"a.npy": np.array(["x", "y"])}, "not numeric"),
        ({"a.npy": np.zeros((0, 3))}, "no rows"),
    ],
)
def test_npy_errors(tmp_path: Path, arrays: dict[str, np.ndarray], why: str) -> None:
    for name, arr in arrays.items():
        np.save(tmp_path / name, arr)
    with pytest.raises(CatalogError, match=why):
        scan_local(str(tmp_path))


def test_npy_of_python_objects_and_garbage(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CatalogError, match=r"obj\.npy: not a readable \.npy array"):
        scan_local(str(tmp_path / "obj.npy"))
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(CatalogError, match=r"junk\.npy"):
        scan_local(str(tmp_path / "junk.npy"))


# --- the Catalog over an in-memory store --------------------------------------------------------


class MemoryStore:
    """Just enough of Client for Catalog: versioned put/get, ls, delete."""

    def __init__(self) -> None:
        self.files: dict[str, list[bytes]] = {}
        self.deleted: list[str] = []

    def put(self, local: Path, name: str, progress: Any = None) -> dict[str, Any]:
        data = local.read_bytes()
        self.files.setdefault(name, []).append(data)
        if progress:
            progress(len(data))
        sha = hashlib.sha256(data).hexdigest()
        return {"name": name, "version": len(self.files[name]), "size": len(data), "sha256": sha}

    def get(self, name: str, local: Path, version: int | None = None) -> dict[str, Any]:
        if name not in self.files:
            raise ClientError(f"no file named {name!r}", 404)
        versions = self.files[name]
        local.write_bytes(versions[(version or len(versions)) - 1])
        return {"name": name}

    def ls(self) -> dict[str, Any]:
        return {"files": [{"name": n, "version": len(v)} for n, v in sorted(self.files.items())]}

    def delete(self, name: str) -> dict[str, Any]:
        del self.files[name]
        self.deleted.append(name)
        return {"deleted": name}


def _catalog() -> tuple[Catalog, MemoryStore]:
    store = MemoryStore()
    return Catalog(cast(Client, store)), store


def test_catalog_dataset_add_replace_fetch() -> None:
    cat, _store = _catalog()
    items = [(f"q{i}", bytes([i % 256]) * 10) for i in range(600)]
    seen: list[tuple[int, int]] = []
    added = cat.add_dataset(
        "d", "jpeg", iter(items), "test", progress=lambda n, b: seen.append((n, b))
    )
    m = added.record
    assert added.replaced is None and added.deleted == ()
    assert (m.count, [s.count for s in m.shards]) == (600, [256, 256, 88])
    assert [n for n, _ in seen] == [256, 512, 600]
    assert list(cat.items(m)) == items
    assert cat.dataset("d") == m
    # Replace with fewer items: the shards the new manifest does not name are deleted, and the
    # old manifest still reads the versions it pinned... until those files are gone.
    again = cat.add_dataset("d", "jpeg", iter(items[:10]), "test")
    assert again.replaced == m
    assert again.deleted == ("datasets/d/shard-00001.bin", "datasets/d/shard-00002.bin")
    assert [s.version for s in again.record.shards] == [2]
    assert cat.fetch_shard(m, m.shards[0]) == items[:256]  # version 1, pinned
    assert list(cat.items(again.record)) == items[:10]
    manifests, problems = cat.datasets()
    assert [x.name for x in manifests] == ["d"] and problems == []


def test_catalog_dataset_errors() -> None:
    cat, store = _catalog()
    with pytest.raises(CatalogError, match="would be empty"):
        cat.add_dataset("d", "jpeg", iter([]), "x")
    with pytest.raises(CatalogError, match="appears twice"):
        cat.add_dataset("d", "jpeg", iter([("a", b"1"), ("a", b"2")]), "x")
    with pytest.raises(CatalogError, match="unknown dataset 'nope'"):
        cat.dataset("nope")
    m = cat.add_dataset("ok", "digits", iter([("0", b"\x00" * 64)]), "x").record
    store.files["datasets/ok/shard-00000.bin"].append(b"tampered")
    with pytest.raises(CatalogError, match="does not match its manifest"):
        cat.fetch_shard(m, replace_version(m.shards[0], 2))
    # An add that stopped half-way left a shard behind: the next add of the name removes it.
    store.files["datasets/ok/shard-00007.bin"] = [b"orphan"]
    store.files["datasets/ok/notes.txt"] = [b"not a shard: kept"]
    again = cat.add_dataset("ok", "digits", iter([("0", b"\x01" * 64)]), "x")
    assert again.deleted == ("datasets/ok/shard-00007.bin",)
    assert "datasets/ok/notes.txt" in store.files
    store.files["datasets/bad/manifest.json"] = [b"{not json"]
    manifests, problems = cat.datasets()
    assert [x.name for x in manifests] == ["ok"]
    assert problems == ["datasets/bad/manifest.json is damaged: not JSON"]


def replace_version(shard: ShardInfo, version: int) -> ShardInfo:
    return ShardInfo(shard.name, shard.count, shard.size, shard.sha256, version)


def test_catalog_models(tmp_path: Path) -> None:
    cat, store = _catalog()
    data = _classifier(["N", 64])
    local = tmp_path / "m.onnx"
    local.write_bytes(data)
    record = describe_model(data, "m", labels=[str(i) for i in range(10)])
    sizes: list[int] = []
    added = cat.add_model(record, local, progress=sizes.append)
    assert added.replaced is None and added.record.version == 1 and sizes == [len(data)]
    assert store.files["models/m.onnx"] == [data]
    assert cat.model("m") == added.record
    again = cat.add_model(record, local)
    assert again.replaced == added.record and again.record.version == 2
    local.write_bytes(data + b"changed")
    with pytest.raises(CatalogError, match="changed while it was uploaded"):
        cat.add_model(record, local)
    with pytest.raises(CatalogError, match="unknown model 'other'"):
        cat.model("other")
    records, problems = cat.models()
    assert [r.name for r in records] == ["m"] and problems == []


# --- CLI argument errors (no node is asked) -----------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["model", "add", "bad name", "x.onnx"], "model name 'bad name' is not allowed"),
        (["model", "add", "m"], "give the model's ONNX FILE, or --builtin"),
        (["model", "add", "m", "f.onnx", "--builtin"], "either FILE or --builtin"),
        (["model", "add", "m", "--builtin", "--labels", "l.txt"], "brings its own"),
        (["model", "add", "resnet50", "--builtin"], "not a built-in model"),
        (["model", "add", "m", "MISSING.onnx"], "no such model file"),
        (["model", "list", "a/b"], "model name 'a/b'"),
        (["dataset", "add", "d"], "give the PATH"),
        (["dataset", "add", "d", "--builtin"], "not a built-in dataset"),
        (["dataset", "add", "d", "MISSING"], "no such file or folder"),
        (["dataset", "add", "..", "x"], "dataset name '..'"),
        (["dataset", "sample", "d", "--count", "0"], "--count must be"),
        (["dataset", "list", "x" * 65], "65 characters"),
    ],
)
def test_cli_argument_errors_are_one_line(
    argv: list[str], why: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IDUNNO_AT", raising=False)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("idunno: error: "), err
    assert why in lines[0]


def test_cli_model_add_of_a_corrupt_file_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage" * 50)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    assert main(["model", "add", "m", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"idunno: error: {bad}: ") and err.count("\n") == 1
    good = tmp_path / "good.onnx"
    good.write_bytes(_classifier(["N", 64]))
    assert main(["model", "add", "m", str(good), "--labels", str(labels)]) == 2
    assert "2 labels for 10 classes" in capsys.readouterr().err
    assert main(["model", "add", "m", str(good), "--preprocess", "imagenet"]) == 2
    assert "use --preprocess digits" in capsys.readouterr().err


def test_cli_help_documents_the_builtin_interface(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["model", "add", "--help"], ["dataset", "add", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert "--builtin" in text
    assert main(["model", "add", "x", "--builtin"]) == 2
    assert "resnet18, alexnet, digits_logreg, digits_mlp" in capsys.readouterr().err
