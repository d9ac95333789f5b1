"""Models and datasets kept in the store: layout, metadata records, manifests and shards.

Store layout (every name is a plain store file, versioned like any other):

    models/<name>.onnx               the ONNX bytes
    models/<name>.json               ModelRecord: name, file, version (the store version of the
                                     .onnx it describes), preprocess, input_name, input_shape
                                     (null = dynamic), output_name, num_classes (0 = unknown until
                                     the first run), labels (null, or one per class from
                                     --labels / the zoo), trained, test_accuracy (null if none),
                                     description, source ("builtin" | "file"), sha256, size,
                                     added_at (unix seconds), format (1)
    datasets/<name>/manifest.json    DatasetManifest: name, kind ("jpeg" | "digits" | "npy"),
                                     preprocess (the model preprocessing its items fit), count,
                                     shard_size (max items per shard), shards (in order, each
                                     {name, count, size, sha256, version}), item_ids (in order),
                                     item_shape (null for jpeg), origin, size, added_at, format
    datasets/<name>/shard-00000.bin  shards in order: shard k holds the items after those of
    datasets/<name>/shard-00001.bin  shards 0..k-1, in item order
    ...

A shard is one msgpack map `{"idunno_shard": 1, "items": [[query_id, bytes], ...]}` (ids are
str, item bytes are msgpack bin). A shard closes at SHARD_MAX_ITEMS (256) items or when the next
item would take it past SHARD_MAX_BYTES (8 MiB), whichever comes first; an item bigger than that
gets a shard of its own. `decode_shard` checks the shape and raises CatalogError otherwise.

Writers put the .onnx / the shards first and the .json / manifest.json last, so a record never
names bytes that are not stored yet; the record pins the store *version* of every file it names
(the .onnx, each shard), so a reader holding a record gets exactly those bytes even while the
name is being replaced (the store keeps the newest 5 versions). Adding an existing name replaces
it: every file gets a new version; shard files the new manifest does not name (the old version
had more shards, or an earlier add stopped half-way) are deleted.

Items and query ids (ids are unique within a dataset and stable: the same input gives the same
ids, in the same order):
- kind "jpeg" from `dataset sample`: 224x224 JPEG photos from `images.sample_images`; the id is
  the image id string ("img_000000.jpg", ...).
- kind "jpeg" from a folder or a glob: each image file's bytes exactly as they are on disk (JPEG,
  PNG, ...: anything Pillow opens; workers decode it with the "imagenet" preprocessing). The id is
  the file's path relative to the folder (for a glob: to the glob's directory part before the
  first wildcard), with "/" separators; items are in sorted id order. Folders are walked
  recursively; hidden files and folders (".name") are ignored; files Pillow does not recognise as
  images are skipped and reported (`LocalSource.skipped`), so adding a README to a folder changes
  no id.
- kind "digits" (`dataset add digits --builtin`): scikit-learn's 1,797 digits, 64 bytes each
  (pixel values 0..16, see `digits.py`); the id is the row number "0".."1796".
- kind "npy" (a .npy file, or a folder/glob of them): row i along axis 0 is one item, stored as
  little-endian float32 bytes of shape `item_shape` (what the "none" preprocessing feeds a model);
  ids are "0", "1", ... counting rows across the files in sorted path order.

Names of models and datasets: 1..64 ASCII letters, digits, "-", "_" or ".", starting with a
letter or digit (`validate_name`).

Everything here except `Catalog` is pure or reads local files only; `Catalog` talks to the cluster
through a synchronous `Client`. Nothing prints: callers report.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgpack

if TYPE_CHECKING:
    from idunno.client import Client

FORMAT: Final = 1
MODELS_DIR: Final = "models"
DATASETS_DIR: Final = "datasets"
MANIFEST: Final = "manifest.json"
SHARD_MAX_ITEMS: Final = 256
SHARD_MAX_BYTES: Final = 8 << 20
KINDS: Final = ("jpeg", "digits", "npy")
PREPROCESSES: Final = ("imagenet", "digits", "none")
# The model preprocessing that each kind of item is made for.
KIND_PREPROCESS: Final[Mapping[str, str]] = {"jpeg": "imagenet", "digits": "digits", "npy": "none"}
BUILTIN_MODELS: Final = ("resnet18", "alexnet", "digits_logreg", "digits_mlp")
BUILTIN_DATASETS: Final = ("digits",)
UNTRAINED_SHORT: Final = "no (untrained: compute cost only)"
MAX_NAME: Final = 64

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHARD_NAME = re.compile(r"shard-(\d{5,})\.bin")
_MANIFEST_PATH = re.compile(r"datasets/([^/]+)/manifest\.json")
_MODEL_PATH = re.compile(r"models/([^/]+)\.json")
_GLOB_MAGIC = re.compile(r"[*?[]")
_SHARD_OVERHEAD: Final = 16  # msgpack framing per item, roughly


class CatalogError(ValueError):
    """A model or dataset that cannot be added or read; the message is one line naming the
    cause (and, where there is one, the fix)."""


def one_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of `text`, bounded (errors are printed as one line)."""
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line[:limit]


# --- names and layout ------------------------------------------------------------------------


def validate_name(name: str, what: str = "model") -> str:
    """Return `name` if it can name a model or dataset, else raise CatalogError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name) if isinstance(name, str) and len(name) <= 80 else "given"
        if isinstance(name, str) and len(name) > MAX_NAME:
            why = f"is {len(name)} characters long, more than {MAX_NAME}"
        elif not name:
            why = "is empty"
        else:
            why = "is not allowed"
        raise CatalogError(
            f"{what} name {shown} {why}: use 1..{MAX_NAME} ASCII letters, digits, '-', '_' or "
            "'.', starting with a letter or digit"
        )
    return name


def model_file(name: str) -> str:
    return f"{MODELS_DIR}/{name}.onnx"


def model_record_file(name: str) -> str:
    return f"{MODELS_DIR}/{name}.json"


def manifest_file(name: str) -> str:
    return f"{DATASETS_DIR}/{name}/{MANIFEST}"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


def shard_file(dataset: str, shard: str) -> str:
    return f"{DATASETS_DIR}/{dataset}/{shard}"


def model_names(store_files: Iterable[str]) -> list[str]:
    """Names of the models whose record is among `store_files`, sorted."""
    return sorted(m.group(1) for f in store_files if (m := _MODEL_PATH.fullmatch(f)))


def dataset_names(store_files: Iterable[str]) -> list[str]:
    """Names of the datasets whose manifest is among `store_files`, sorted."""
    return sorted(m.group(1) for f in store_files if (m := _MANIFEST_PATH.fullmatch(f)))


# --- shards ----------------------------------------------------------------------------------

Item = tuple[str, bytes]


def encode_shard(items: Iterable[Item]) -> bytes:
    """Items (query id, bytes) as one shard (see the module docstring)."""
    body: list[list[str | bytes]] = []
    for query_id, data in items:
        if not isinstance(query_id, str) or not isinstance(data, bytes):
            raise CatalogError(
                f"a shard item is (str id, bytes), got ({type(query_id).__name__}, "
                f"{type(data).__name__})"
            )
        body.append([query_id, data])
    packed: bytes = msgpack.packb({"idunno_shard": FORMAT, "items": body}, use_bin_type=True)
    return packed


def decode_shard(data: bytes) -> list[Item]:
    """A shard's items in order; CatalogError if the bytes are not a shard."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CatalogError(
            f"not an idunno shard (msgpack: {one_line(str(exc)) or exc!r})"
        ) from None
    if not isinstance(obj, dict) or obj.get("idunno_shard") != FORMAT:
        raise CatalogError(f"not an idunno shard (no 'idunno_shard': {FORMAT} header)")
    raw = obj.get("items")
    if not isinstance(raw, list):
        raise CatalogError("not an idunno shard ('items' is not a list)")
    items: list[Item] = []
    for i, entry in enumerate(raw):
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or not isinstance(entry[1], bytes)
        ):
            raise CatalogError(f"damaged shard: item {i} is not [str id, bytes]")
        items.append((entry[0], entry[1]))
    return items


def item_cost(item: Item) -> int:
    """Bytes an item takes in a shard, roughly."""
    return len(item[0].encode("utf-8", "surrogatepass")) + len(item[1]) + _SHARD_OVERHEAD


def shards_for(
    items: Iterable[Item],
    max_items: int = SHARD_MAX_ITEMS,
    max_bytes: int = SHARD_MAX_BYTES,
) -> Iterator[list[Item]]:
    """Cut items, in order, into shards of at most `max_items` items and about `max_bytes`
    (an item bigger than `max_bytes` alone makes a shard). Lazy: holds one shard at a time."""
    if max_items < 1 or max_bytes < 1:
        raise ValueError("max_items and max_bytes must be at least 1")
    shard: list[Item] = []
    size = 0
    for item in items:
        cost = item_cost(item)
        if shard and (len(shard) >= max_items or size + cost > max_bytes):
            yield shard
            shard, size = [], 0
        shard.append(item)
        size += cost
    if shard:
        yield shard


# --- records ---------------------------------------------------------------------------------


def _need(obj: Mapping[str, Any], key: str, types: type | tuple[type, ...], what: str) -> Any:
    if key not in obj:
        raise CatalogError(f"{what} is damaged: no {key!r} field")
    value = obj[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise CatalogError(f"{what} is damaged: {key!r} has the wrong type")
    return value


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _shape(value: Any, what: str) -> tuple[int | None, ...]:
    if not isinstance(value, list) or not all(
        v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in value
    ):
        raise CatalogError(f"{what} is damaged: a shape must be a list of ints or nulls")
    return tuple(value)


def show_shape(shape: Sequence[int | None] | None) -> str:
    """[N, 3, 224, 224]: a dynamic dimension shows as N (the first) or ?."""
    if shape is None:
        return "-"
    parts = [str(d) if d is not None else ("N" if i == 0 else "?") for i, d in enumerate(shape)]
    return "[" + ", ".join(parts) + "]"


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """models/<name>.json: what a worker needs to load a stored model and read its answers."""

    name: str
    preprocess: str
    input_name: str
    input_shape: tuple[int | None, ...]
    output_name: str
    num_classes: int  # 0: not known from the graph (a dynamic class dimension)
    labels: tuple[str, ...] | None
    trained: bool
    test_accuracy: float | None
    description: str
    source: str  # "builtin" or "file"
    sha256: str
    size: int
    added_at: float
    version: int = 0  # the store version of models/<name>.onnx; 0 until uploaded

    @property
    def file(self) -> str:
        return model_file(self.name)

    @property
    def trained_text(self) -> str:
        return "yes" if self.trained else UNTRAINED_SHORT

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["labels"] = list(self.labels) if self.labels is not None else None
        out["file"] = self.file
        out["format"] = FORMAT
        return out

    @classmethod
    def from_json(cls, obj: Any, what: str = "model record") -> ModelRecord:
        if not isinstance(obj, dict):
            raise CatalogError(f"{what} is damaged: not a JSON object")
        labels = obj.get("labels")
        if labels is not None and (
            not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)
        ):
            raise CatalogError(f"{what} is damaged: 'labels' must be a list of strings or null")
        accuracy = obj.get("test_accuracy")
        if accuracy is not None and (
            not isinstance(accuracy, int | float) or isinstance(accuracy, bool)
        ):
            raise CatalogError(f"{what} is damaged: 'test_accuracy' must be a number or null")
        return cls(
            name=_need(obj, "name", str, what),
            preprocess=_need(obj, "preprocess", str, what),
            input_name=_need(obj, "input_name", str, what),
            input_shape=_shape(_need(obj, "input_shape", list, what), what),
            output_name=_need(obj, "output_name", str, what),
            num_classes=_need(obj, "num_classes", int, what),
            labels=tuple(labels) if labels is not None else None,
            trained=_need(obj, "trained", bool, what),
            test_accuracy=float(accuracy) if accuracy is not None else None,
            description=_need(obj, "description", str, what),
            source=_need(obj, "source", str, what),
            sha256=_need(obj, "sha256", str, what),
            size=_need(obj, "size", int, what),
            added_at=float(_need(obj, "added_at", (int, float), what)),
            version=_need(obj, "version", int, what),
        )


@dataclass(frozen=True, slots=True)
class ShardInfo:
    name: str  # shard-00000.bin (the store file is datasets/<dataset>/<name>)
    count: int
    size: int
    sha256: str
    version: int  # the store version holding these bytes; 0 until uploaded


@dataclass(frozen=True, slots=True)
class DatasetManifest:
    """datasets/<name>/manifest.json (see the module docstring)."""

    name: str
    kind: str
    count: int
    shard_size: int
    shards: tuple[ShardInfo, ...]
    item_ids: tuple[str, ...]
    item_shape: tuple[int, ...] | None
    origin: str
    added_at: float

    @property
    def preprocess(self) -> str:
        return KIND_PREPROCESS[self.kind]

    @property
    def size(self) -> int:
        return sum(s.size for s in self.shards)

    @property
    def shard_names(self) -> list[str]:
        return [s.name for s in self.shards]

    def shard_ranges(self) -> list[tuple[ShardInfo, int, int]]:
        """(shard, index of its first item, item count) for every shard, in order."""
        out: list[tuple[ShardInfo, int, int]] = []
        first = 0
        for s in self.shards:
            out.append((s, first, s.count))
            first += s.count
        return out

    def summary(self) -> dict[str, Any]:
        """Everything but the item ids (listing many datasets stays small)."""
        out = self.to_json()
        del out["item_ids"]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "kind": self.kind,
            "preprocess": self.preprocess,
            "count": self.count,
            "shard_size": self.shard_size,
            "shards": [asdict(s) for s in self.shards],
            "item_ids": list(self.item_ids),
            "item_shape": list(self.item_shape) if self.item_shape is not None else None,
            "origin": self.origin,
            "size": self.size,
            "added_at": self.added_at,
        }

    @classmethod
    def from_json(cls, obj: Any, what: str = "dataset manifest") -> DatasetManifest:
        if not isinstance(obj, dict):
            raise CatalogError(f"{what} is damaged: not a JSON object")
        shards = []
        for s in _need(obj, "shards", list, what):
            if not isinstance(s, dict):
                raise CatalogError(f"{what} is damaged: a shard entry is not an object")
            shards.append(
                ShardInfo(
                    name=_need(s, "name", str, what),
                    count=_need(s, "count", int, what),
                    size=_need(s, "size", int, what),
                    sha256=_need(s, "sha256", str, what),
                    version=_need(s, "version", int, what),
                )
            )
        ids = _need(obj, "item_ids", list, what)
        if not all(isinstance(i, str) for i in ids):
            raise CatalogError(f"{what} is damaged: 'item_ids' must be strings")
        shape = obj.get("item_shape")
        item_shape = _shape(shape, what) if shape is not None else None
        if item_shape is not None and any(d is None for d in item_shape):
            raise CatalogError(f"{what} is damaged: 'item_shape' must be fixed")
        return build_manifest(
            name=_need(obj, "name", str, what),
            kind=_need(obj, "kind", str, what),
            item_ids=ids,
            shards=shards,
            added_at=float(_need(obj, "added_at", (int, float), what)),
            origin=_need(obj, "origin", str, what),
            item_shape=(
                tuple(d for d in item_shape if d is not None) if item_shape is not None else None
            ),
            shard_size=_need(obj, "shard_size", int, what),
            count=_need(obj, "count", int, what),
        )


def build_manifest(
    name: str,
    kind: str,
    item_ids: Sequence[str],
    shards: Sequence[ShardInfo],
    added_at: float,
    origin: str = "",
    item_shape: Sequence[int] | None = None,
    shard_size: int = SHARD_MAX_ITEMS,
    count: int | None = None,
) -> DatasetManifest:
    """A checked manifest: known kind, unique ids, shards named shard-00000.bin, ... in order
    whose counts add up to the ids. Pure: the same arguments give an equal manifest."""
    validate_name(name, "dataset")
    if kind not in KINDS:
        raise CatalogError(f"dataset kind {kind!r} is unknown: one of {', '.join(KINDS)}")
    ids = tuple(item_ids)
    if count is not None and count != len(ids):
        raise CatalogError(f"dataset {name!r}: count {count} but {len(ids)} item ids")
    if len(set(ids)) != len(ids):
        raise CatalogError(f"dataset {name!r}: item ids are not unique")
    for i, s in enumerate(shards):
        if s.name != shard_name(i):
            raise CatalogError(f"dataset {name!r}: shard {i} is named {s.name!r}")
    if sum(s.count for s in shards) != len(ids):
        raise CatalogError(f"dataset {name!r}: the shards hold a different number of items")
    return DatasetManifest(
        name=name,
        kind=kind,
        count=len(ids),
        shard_size=shard_size,
        shards=tuple(shards),
        item_ids=ids,
        item_shape=tuple(item_shape) if item_shape is not None else None,
        origin=origin,
        added_at=added_at,
    )


# --- models ----------------------------------------------------------------------------------


def parse_labels(text: str, source: str = "--labels") -> tuple[str, ...]:
    """One label per line (surrounding spaces dropped, trailing empty lines ignored)."""
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise CatalogError(f"{source} has no labels: give one label per line, one per class")
    for number, line in enumerate(lines, 1):
        if not line:
            raise CatalogError(f"{source}: line {number} is empty: give one label per line")
    return tuple(lines)


def read_labels(path: Path) -> tuple[str, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"no such labels file: {path} (check the path)") from None
    except IsADirectoryError:
        raise CatalogError(f"--labels {path} is a folder: give a text file") from None
    except UnicodeDecodeError:
        raise CatalogError(f"--labels {path} is not UTF-8 text") from None
    except OSError as exc:
        raise CatalogError(f"cannot read --labels {path}: {exc.strerror or exc}") from None
    return parse_labels(text, f"--labels {path}")


def read_local_file(path: Path, what: str = "model file") -> bytes:
    """A local file's bytes, or CatalogError naming the problem."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CatalogError(f"no such {what}: {path} (check the path)") from None
    except IsADirectoryError:
        raise CatalogError(f"{path} is a folder: give the {what} itself") from None
    except OSError as exc:
        raise CatalogError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _inspect_raw(model_bytes: bytes, name: str) -> tuple[str, tuple[int | None, ...], str, int]:
    """(input name, input shape, output name, classes) for preprocess "none": one float32 input
    with fixed dimensions after the batch dimension and a float32 [N, C] output."""
    from idunno.inference.zoo import model_io

    try:
        io = model_io(model_bytes, name)
    except ValueError as exc:
        raise CatalogError(one_line(str(exc).removeprefix(f"{name}: "))) from None
    shape = io.input_shape
    if not shape or any(d is None for d in shape[1:]):
        raise CatalogError(
            f"input shape {show_shape(shape)}: preprocess 'none' needs fixed dimensions "
            "after the batch dimension"
        )
    try:
        output_name = io.require_output(name)
    except ValueError as exc:
        raise CatalogError(one_line(str(exc).removeprefix(f"{name}: "))) from None
    return io.input_name, shape, output_name, io.num_classes


def describe_model(
    model_bytes: bytes,
    name: str,
    preprocess: str | None = None,
    labels: Sequence[str] | None = None,
    source: str = "file",
    description: str | None = None,
    added_at: float | None = None,
) -> ModelRecord:
    """The record of a model (not yet uploaded: version 0). `preprocess` None takes what the
    input shape implies ([N, 3, H, W] -> imagenet, [N, 64] -> digits); "none" feeds raw float32
    items of the input's own shape. CatalogError names what does not fit."""
    from idunno.inference.zoo import inspect_model, read_metadata

    validate_name(name, "model")
    if preprocess is not None and preprocess not in PREPROCESSES:
        raise CatalogError(
            f"preprocess {preprocess!r} is unknown: one of {', '.join(PREPROCESSES)}"
        )
    if not model_bytes:
        raise CatalogError("the file is empty: give an ONNX model")
    try:
        info = inspect_model(model_bytes, name)
        implied: str | None = info.preprocessing
        input_name, shape, output_name = info.input_name, info.input_shape, info.output_name
        classes, note = info.num_classes, info.description
    except ValueError as exc:
        if preprocess != "none" or str(exc).startswith("not an ONNX model"):
            raise CatalogError(one_line(str(exc).removeprefix(f"{name}: "))) from None
        implied, note = None, "user ONNX model"
        input_name, shape, output_name, classes = _inspect_raw(model_bytes, name)
    chosen = preprocess or implied or "none"
    if chosen == "none":
        input_name, shape, output_name, classes = _inspect_raw(model_bytes, name)
    elif chosen != implied:
        raise CatalogError(
            f"--preprocess {chosen} does not fit input shape {show_shape(shape)}, which "
            f"takes {implied} items: use --preprocess {implied} (or none)"
        )
    meta = read_metadata(model_bytes)
    trained = meta.get("idunno.trained", "true") != "false"  # as zoo.inspect_model reads it
    accuracy: float | None = None
    raw_accuracy = meta.get("idunno.test_accuracy")
    if raw_accuracy is not None:
        try:
            accuracy = float(raw_accuracy)
        except ValueError:
            accuracy = None
        if accuracy is not None and not math.isfinite(accuracy):
            accuracy = None
    if labels is not None:
        labels = tuple(labels)
        if classes and len(labels) != classes:
            raise CatalogError(
                f"{len(labels)} labels for {classes} classes: give one label per class"
            )
        classes = classes or len(labels)
    return ModelRecord(
        name=name,
        preprocess=chosen,
        input_name=input_name,
        input_shape=tuple(shape),
        output_name=output_name,
        num_classes=classes,
        labels=tuple(labels) if labels is not None else None,
        trained=trained,
        test_accuracy=accuracy,
        description=description or note,
        source=source,
        sha256=hashlib.sha256(model_bytes).hexdigest(),
        size=len(model_bytes),
        added_at=time.time() if added_at is None else added_at,
    )


def builtin_model(name: str, seed: int = 0) -> tuple[bytes, ModelRecord]:
    """Build a zoo model offline (see zoo.py) and describe it. The digits models carry their
    labels "0".."9" and their held-out test accuracy; resnet18 and alexnet are UNTRAINED."""
    from idunno.inference.zoo import MODEL_INFO, build_model

    if name not in BUILTIN_MODELS:
        raise CatalogError(
            f"{name!r} is not a built-in model: choose one of {', '.join(BUILTIN_MODELS)}, "
            "or give an ONNX file"
        )
    data = build_model(name, seed)
    info = MODEL_INFO[name]
    labels = info.labels if info.trained else None  # an untrained model's labels mean nothing
    record = describe_model(data, name, labels=labels, source="builtin")
    return data, replace(record, description=info.description)


# --- local dataset sources -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalSource:
    """Files found for `dataset add NAME PATH`, in item order."""

    kind: str  # "jpeg" or "npy"
    what: str  # what PATH was: "folder", "glob" or "file"
    origin: str
    files: tuple[tuple[str, Path], ...]  # (id for jpeg / relative path for npy, file)
    skipped: tuple[str, ...]  # files that are not images (or not .npy), relative paths
    count: int  # items: one per image, one per row for npy
    item_shape: tuple[int, ...] | None = None
    rows: tuple[int, ...] = field(default=())  # npy: rows per file
    total_bytes: int = 0  # bytes the items take (before shard framing)

    @property
    def ids(self) -> list[str]:
        if self.kind == "npy":
            return [str(i) for i in range(self.count)]
        return [i for i, _ in self.files]


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _candidates(path_text: str) -> tuple[list[tuple[str, Path]], str, str]:
    """([(relative posix path, file)] sorted, what PATH is, how to show it)."""
    path = Path(path_text).expanduser()
    if path.is_dir():
        found: list[tuple[str, Path]] = []
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for f in files:
                full = Path(root) / f
                rel = full.relative_to(path).as_posix()
                if not _is_hidden(rel) and full.is_file():
                    found.append((rel, full))
        return sorted(found), "folder", str(path.resolve())
    if path.is_file():
        return [(path.name, path)], "file", str(path.resolve())
    if not _GLOB_MAGIC.search(path_text):
        if path.exists():
            raise CatalogError(f"{path_text} is neither a file nor a folder")
        raise CatalogError(f"no such file or folder: {path_text} (check the path)")
    parts = Path(path_text).expanduser().parts
    static = list(parts[: next(i for i, p in enumerate(parts) if _GLOB_MAGIC.search(p))])
    base = Path(*static) if static else Path()
    matches = []
    for m in glob.glob(str(Path(path_text).expanduser()), recursive=True):
        full = Path(m)
        if full.is_file():
            rel = os.path.relpath(full, base).replace(os.sep, "/")
            matches.append((rel, full))
    if not matches:
        raise CatalogError(f"no files match {path_text!r} (check the pattern)")
    return sorted(matches), "glob", repr(path_text)


def is_image(path: Path) -> bool:
    """True if Pillow recognises the file as an image (reads only its header)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return bool(img.format)
    except Image.DecompressionBombError:
        return True  # an image, if an absurdly large one: its query fails at the worker
    except (OSError, SyntaxError, ValueError):
        return False


def _npy_header(path: Path, rel: str) -> tuple[int, tuple[int, ...], int]:
    """(rows, item shape, bytes per item as float32) of a .npy file, reading only its header."""
    import numpy as np

    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CatalogError(f"{rel}: not a readable .npy array ({one_line(str(exc))})") from None
    if not isinstance(arr, np.ndarray):
        raise CatalogError(f"{rel}: not a single .npy array")
    if arr.ndim < 1:
        raise CatalogError(f"{rel}: a 0-dimensional array has no rows: give shape [N, ...]")
    if arr.dtype.kind not in "biuf":
        raise CatalogError(f"{rel}: dtype {arr.dtype} is not numeric (items are stored as float32)")
    item_shape = tuple(int(d) for d in arr.shape[1:])
    return int(arr.shape[0]), item_shape, 4 * math.prod(item_shape)


def scan_local(path_text: str) -> LocalSource:
    """Find the items of `dataset add NAME PATH`: a folder (walked recursively), a glob or one
    file. If any .npy file is found the dataset is of kind "npy" (other files are skipped);
    otherwise every image file is an item and the rest are skipped. CatalogError if nothing
    usable is found."""
    found, what, where = _candidates(path_text)
    origin = f"{what} {where}"
    if not found:
        raise CatalogError(f"folder {where} is empty: put images or .npy files in it")
    npys = [(rel, p) for rel, p in found if p.suffix.lower() == ".npy"]
    if npys:
        skipped = tuple(rel for rel, p in found if p.suffix.lower() != ".npy")
        rows: list[int] = []
        shape: tuple[int, ...] | None = None
        item_bytes = 0
        for rel, p in npys:
            n, s, item_bytes = _npy_header(p, rel)
            if shape is not None and s != shape:
                raise CatalogError(
                    f"{rel}: rows of shape {list(s)}, but earlier files have rows of shape "
                    f"{list(shape)}: every array must have the same shape after axis 0"
                )
            shape = s
            rows.append(n)
        count = sum(rows)
        if count == 0:
            raise CatalogError(f"{where}: the .npy arrays have no rows")
        return LocalSource(
            kind="npy",
            what=what,
            origin=f"{origin}: {len(npys)} .npy file(s), {count} rows",
            files=tuple(npys),
            skipped=skipped,
            count=count,
            item_shape=shape,
            rows=tuple(rows),
            total_bytes=count * item_bytes,
        )
    images: list[tuple[str, Path]] = []
    skipped_list: list[str] = []
    total = 0
    for rel, p in found:
        if is_image(p):
            images.append((rel, p))
            total += p.stat().st_size
        else:
            skipped_list.append(rel)
    if not images:
        raise CatalogError(
            f"{where} has no images ({len(skipped_list)} file(s) that Pillow does not open as "
            f"images, e.g. {', '.join(skipped_list[:3])}): give JPEG/PNG files or .npy arrays"
        )
    return LocalSource(
        kind="jpeg",
        what=what,
        origin=f"{origin}: {len(images)} image(s)",
        files=tuple(images),
        skipped=tuple(skipped_list),
        count=len(images),
        total_bytes=total,
    )


def local_items(source: LocalSource) -> Iterator[Item]:
    """The items of a scanned source, in order (files are read as they are needed)."""
    if source.kind == "jpeg":
        for query_id, path in source.files:
            yield query_id, read_local_file(path, "image file")
        return
    import numpy as np

    index = 0
    for rel, path in source.files:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise CatalogError(f"{rel}: not a readable .npy array ({one_line(str(exc))})") from None
        for row in arr:
            yield str(index), np.ascontiguousarray(row, dtype="<f4").tobytes()
            index += 1


# --- the cluster -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelAdded:
    """What `Catalog.add_model` did: the stored record and the one it replaced, if any."""

    record: ModelRecord
    replaced: ModelRecord | None


@dataclass(frozen=True, slots=True)
class DatasetAdded:
    """What `Catalog.add_dataset` did: the stored manifest, the one it replaced (if any) and
    the shard files of the old one it deleted."""

    record: DatasetManifest
    replaced: DatasetManifest | None
    deleted: tuple[str, ...] = ()


# progress(items done, bytes stored) while a dataset uploads
DatasetProgress = Callable[[int, int], None]


class Catalog:
    """Models and datasets in the store, through a synchronous Client."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # --- plumbing -------------------------------------------------------------------------

    def files(self) -> dict[str, dict[str, Any]]:
        """Every stored file (newest version) by name."""
        return {f["name"]: f for f in self.client.ls()["files"]}

    def get_bytes(self, name: str, version: int | None = None) -> bytes:
        with tempfile.TemporaryDirectory(prefix="idunno-") as tmp:
            local = Path(tmp) / "file"
            self.client.get(name, local, version)
            return local.read_bytes()

    def put_bytes(self, name: str, data: bytes) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="idunno-") as tmp:
            local = Path(tmp) / "file"
            local.write_bytes(data)
            return self.client.put(local, name)

    def _json(self, name: str, version: int | None = None) -> Any:
        data = self.get_bytes(name, version)
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise CatalogError(f"{name} is damaged: not JSON") from None

    # --- models ---------------------------------------------------------------------------

    def model(self, name: str, files: Mapping[str, Any] | None = None) -> ModelRecord:
        validate_name(name, "model")
        listing = self.files() if files is None else files
        if model_record_file(name) not in listing:
            raise CatalogError(
                f"unknown model {name!r}: `idunno model list` shows the models there are"
            )
        return ModelRecord.from_json(self._json(model_record_file(name)), model_record_file(name))

    def models(self) -> tuple[list[ModelRecord], list[str]]:
        """(records, problems): a damaged record is reported, not fatal."""
        listing = self.files()
        records, problems = [], []
        for name in model_names(listing):
            try:
                records.append(self.model(name, listing))
            except CatalogError as exc:
                problems.append(str(exc))
        return records, problems

    def add_model(
        self,
        record: ModelRecord,
        local: Path,
        progress: Callable[[int], None] | None = None,
    ) -> ModelAdded:
        """Upload the model at `local` (whose bytes `record` describes) and then its record."""
        listing = self.files()
        previous: ModelRecord | None = None
        if model_record_file(record.name) in listing:
            try:
                previous = self.model(record.name, listing)
            except CatalogError:
                previous = None  # a damaged record is simply replaced
        out = self.client.put(local, record.file, progress=progress)
        if out["sha256"] != record.sha256:
            raise CatalogError(f"{local} changed while it was uploaded: add it again")
        stored = replace(record, version=int(out["version"]))
        self.put_bytes(model_record_file(record.name), _dump(stored.to_json()))
        return ModelAdded(stored, previous)

    # --- datasets -------------------------------------------------------------------------

    def dataset(self, name: str, files: Mapping[str, Any] | None = None) -> DatasetManifest:
        validate_name(name, "dataset")
        listing = self.files() if files is None else files
        if manifest_file(name) not in listing:
            raise CatalogError(
                f"unknown dataset {name!r}: `idunno dataset list` shows the datasets there are"
            )
        return DatasetManifest.from_json(self._json(manifest_file(name)), manifest_file(name))

    def datasets(self) -> tuple[list[DatasetManifest], list[str]]:
        listing = self.files()
        manifests, problems = [], []
        for name in dataset_names(listing):
            try:
                manifests.append(self.dataset(name, listing))
            except CatalogError as exc:
                problems.append(str(exc))
        return manifests, problems

    def add_dataset(
        self,
        name: str,
        kind: str,
        items: Iterable[Item],
        origin: str,
        item_shape: Sequence[int] | None = None,
        progress: DatasetProgress | None = None,
    ) -> DatasetAdded:
        """Shard the items, upload the shards, then the manifest; delete shards the previous
        manifest named that this one does not."""
        validate_name(name, "dataset")
        if kind not in KINDS:
            raise CatalogError(f"dataset kind {kind!r} is unknown: one of {', '.join(KINDS)}")
        listing = self.files()
        previous: DatasetManifest | None = None
        if manifest_file(name) in listing:
            try:
                previous = self.dataset(name, listing)
            except CatalogError:
                previous = None
        ids: list[str] = []
        seen: set[str] = set()
        shards: list[ShardInfo] = []
        stored = 0
        for chunk in shards_for(items):
            for query_id, _ in chunk:
                if query_id in seen:
                    raise CatalogError(f"dataset {name!r}: query id {query_id!r} appears twice")
                seen.add(query_id)
                ids.append(query_id)
            data = encode_shard(chunk)
            shard = shard_name(len(shards))
            out = self.put_bytes(shard_file(name, shard), data)
            sha = hashlib.sha256(data).hexdigest()
            if out["sha256"] != sha:  # pragma: no cover - the store checks this end to end
                raise CatalogError(f"shard {shard} of {name!r} was stored damaged: add it again")
            shards.append(ShardInfo(shard, len(chunk), len(data), sha, int(out["version"])))
            stored += len(data)
            if progress:
                progress(len(ids), stored)
        if not ids:
            raise CatalogError(f"dataset {name!r} would be empty: give at least one item")
        manifest = build_manifest(
            name, kind, ids, shards, time.time(), origin, item_shape, SHARD_MAX_ITEMS
        )
        self.put_bytes(manifest_file(name), _dump(manifest.to_json()))
        # Shards of the replaced version (or of an add that never finished) not named now.
        prefix = f"{DATASETS_DIR}/{name}/"
        keep = set(manifest.shard_names)
        deleted: list[str] = []
        for stale in sorted(listing):
            shard = stale.removeprefix(prefix)
            if stale.startswith(prefix) and _SHARD_NAME.fullmatch(shard) and shard not in keep:
                self.client.delete(stale)
                deleted.append(stale)
        return DatasetAdded(manifest, previous, tuple(deleted))

    def fetch_shard(self, manifest: DatasetManifest, shard: ShardInfo) -> list[Item]:
        """One shard's items, exactly the version the manifest names (sha256 checked)."""
        data = self.get_bytes(shard_file(manifest.name, shard.name), shard.version or None)
        if hashlib.sha256(data).hexdigest() != shard.sha256:
            raise CatalogError(
                f"shard {shard.name} of {manifest.name!r} does not match its manifest"
            )
        items = decode_shard(data)
        if len(items) != shard.count:
            raise CatalogError(f"shard {shard.name} of {manifest.name!r} has the wrong count")
        return items

    def items(self, manifest: DatasetManifest) -> Iterator[Item]:
        for shard in manifest.shards:
            yield from self.fetch_shard(manifest, shard)


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()
