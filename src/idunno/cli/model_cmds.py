"""CLI commands for models and datasets kept in the store: `idunno model ...`, `idunno dataset ...`.

    idunno model add NAME FILE.onnx [--preprocess imagenet|digits|none] [--labels FILE]
    idunno model add NAME --builtin        NAME: resnet18, alexnet, digits_logreg, digits_mlp
    idunno model list [NAME] [--json]
    idunno dataset add NAME PATH           a folder, a glob or one file: images or .npy arrays
    idunno dataset add digits --builtin    scikit-learn's 1,797 digits
    idunno dataset sample NAME --count N [--seed S]
    idunno dataset list [NAME] [--json]

The store layout, the shard format and how query ids are chosen are in
`idunno.inference.catalog`. Heavy imports (onnx, numpy, Pillow, scikit-learn) happen inside the
commands, so the rest of the CLI starts as fast as before.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from idunno.cli.options import add_cluster_options
from idunno.cli.progress import Progress
from idunno.cli.render import format_time, table
from idunno.cli.render import human_size as human
from idunno.client import Client

if TYPE_CHECKING:
    from idunno.inference.catalog import DatasetManifest, ModelAdded, ModelRecord

ClientFactory = Callable[[argparse.Namespace], Client]
AddParser = Callable[..., argparse.ArgumentParser]

BUILTIN_MODELS_HELP = "resnet18, alexnet (UNTRAINED: compute cost only), digits_logreg, digits_mlp"
PROGRESS_MIN_ITEMS = 512  # a dataset this large shows a progress line on a TTY
MAX_SAMPLE = 1_000_000


class _Usage(ValueError):
    """A bad combination of arguments (main prints it as one line, exit 2)."""


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _warn(message: str) -> None:
    print(f"idunno: warning: {message}", file=sys.stderr)


def _accuracy(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _classes(n: int) -> str:
    return str(n) if n else "?"


# --- models ----------------------------------------------------------------------------------


def cmd_model_add(args: argparse.Namespace, client: ClientFactory) -> int:
    from idunno.inference import catalog

    name = catalog.validate_name(args.name, "model")
    t0 = time.monotonic()
    built: bytes | None = None
    if args.builtin:
        if args.file is not None:
            raise _Usage("give either FILE or --builtin, not both")
        if args.preprocess or args.labels:
            raise _Usage("a built-in model brings its own preprocessing and labels")
        built, record = catalog.builtin_model(name)
        built_s = time.monotonic() - t0
    else:
        if args.file is None:
            raise _Usage(
                f"give the model's ONNX FILE, or --builtin for a zoo model ({BUILTIN_MODELS_HELP})"
            )
        local = Path(args.file)
        data = catalog.read_local_file(local, "model file")
        labels = catalog.read_labels(Path(args.labels)) if args.labels else None
        try:
            record = catalog.describe_model(data, name, args.preprocess, labels, source="file")
        except catalog.CatalogError as exc:
            raise catalog.CatalogError(f"{local}: {exc}") from None
        del data
    cat = catalog.Catalog(client(args))
    t1 = time.monotonic()
    bar = Progress(f"model add {name}", record.size)
    try:
        if built is not None:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="idunno-") as tmp:
                local = Path(tmp) / f"{name}.onnx"
                local.write_bytes(built)
                del built
                added = cat.add_model(record, local, progress=bar)
        else:
            added = cat.add_model(record, local, progress=bar)
    finally:
        bar.close()
    stored = added.record
    if args.json:
        _print_json({**stored.to_json(), "replaced_version": _replaced_version(added)})
        return 0
    if args.builtin:
        print(f"built {name} offline in {built_s:.1f} s: {stored.description}")
    print(
        f"added model {name}: {stored.file} version {stored.version} ({human(stored.size)}), "
        f"preprocess {stored.preprocess}, input {catalog.show_shape(stored.input_shape)}, "
        f"{_classes(stored.num_classes)} classes ({time.monotonic() - t1:.1f} s)"
    )
    if stored.trained:
        acc = stored.test_accuracy
        print(f"trained: yes; test accuracy {acc:.4f}" if acc is not None else "trained: yes")
    else:
        print(
            f"trained: NO. {name} has seeded random (UNTRAINED) weights: it costs what the real "
            "model costs, but its predictions mean nothing"
        )
    _say_replaced(
        added.replaced is not None, f"model {name}", stored.file, _replaced_version(added)
    )
    return 0


def _replaced_version(added: ModelAdded) -> int | None:
    return added.replaced.version if added.replaced is not None else None


def _say_replaced(replaced: bool, what: str, file: str, old_version: int | None = None) -> None:
    if not replaced:
        return
    old = f" (its record was version {old_version})" if old_version is not None else ""
    print(
        f"{what} already existed{old}: replaced it with this one; the store keeps older "
        f"versions (`idunno get-versions {file} 2 OUT`)"
    )


def _model_rows(records: Iterable[ModelRecord]) -> list[list[str]]:
    from idunno.inference.catalog import show_shape

    return [
        [
            r.name,
            r.preprocess,
            show_shape(r.input_shape),
            _classes(r.num_classes),
            r.trained_text,
            _accuracy(r.test_accuracy),
            human(r.size),
            str(r.version),
            format_time(r.added_at),
        ]
        for r in records
    ]


MODEL_HEADERS = [
    "NAME",
    "PREPROCESS",
    "INPUT",
    "CLASSES",
    "TRAINED",
    "TEST ACC",
    "SIZE",
    "VERSION",
    "ADDED",
]


def cmd_model_list(args: argparse.Namespace, client: ClientFactory) -> int:
    from idunno.inference import catalog

    if args.name is not None:
        catalog.validate_name(args.name, "model")
        record = catalog.Catalog(client(args)).model(args.name)
        if args.json:
            _print_json(record.to_json())
            return 0
        labels = record.labels
        shown = "-" if labels is None else ", ".join(labels[:10])
        if labels is not None and len(labels) > 10:
            shown += f", ... ({len(labels)} in all)"
        rows = [
            ["name", record.name],
            ["file", f"{record.file} version {record.version}"],
            ["trained", record.trained_text],
            ["test accuracy", _accuracy(record.test_accuracy)],
            ["preprocess", record.preprocess],
            ["input", f"{record.input_name} {catalog.show_shape(record.input_shape)} float32"],
            ["output", f"{record.output_name} [N, {_classes(record.num_classes)}]"],
            ["labels", shown],
            ["description", record.description],
            ["source", record.source],
            ["size", human(record.size)],
            ["sha256", record.sha256],
            ["added", format_time(record.added_at)],
        ]
        print(table(["FIELD", "VALUE"], rows))
        return 0
    records, problems = catalog.Catalog(client(args)).models()
    for p in problems:
        _warn(p)
    if args.json:
        _print_json({"models": [r.to_json() for r in records]})
        return 0
    print(table(MODEL_HEADERS, _model_rows(records)))
    if not records:
        print(
            "(no models yet: `idunno model add NAME FILE.onnx`, or "
            "`idunno model add digits_logreg --builtin`)"
        )
    elif any(not r.trained for r in records):
        print("untrained models have seeded random weights: real compute cost, meaningless labels")
    return 0


# --- datasets --------------------------------------------------------------------------------


class _ItemProgress:
    """`dataset add NAME [####      ] 1200/5000 items, 12.3 MB stored` on a TTY's stderr."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = max(total, 1)
        self.enabled = sys.stderr.isatty() and total >= PROGRESS_MIN_ITEMS
        self._shown = 0.0
        self.items = 0
        self.stored = 0

    def count(self, items: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
        """Pass items through, counting them as they are read or made."""
        for item in items:
            self.items += 1
            self._tick()
            yield item

    def __call__(self, items: int, stored: int) -> None:
        """Catalog.add_dataset's report after each shard is stored."""
        self.stored = stored
        self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        if self.enabled and now - self._shown > 0.1:
            self._shown = now
            self._draw()

    def _draw(self) -> None:
        bar = "#" * int(min(1.0, self.items / self.total) * 30)
        sys.stderr.write(
            f"\r{self.label} [{bar:<30}] {self.items}/{self.total} items, "
            f"{human(self.stored)} stored"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            sys.stderr.write("\n")


def _upload(
    args: argparse.Namespace,
    client: ClientFactory,
    kind: str,
    items: Iterator[tuple[str, bytes]],
    count: int,
    origin: str,
    item_shape: tuple[int, ...] | None,
    note: str,
) -> int:
    from idunno.inference import catalog

    cat = catalog.Catalog(client(args))
    t0 = time.monotonic()
    bar = _ItemProgress(f"dataset add {args.name}", count)
    try:
        added = cat.add_dataset(args.name, kind, bar.count(items), origin, item_shape, progress=bar)
    finally:
        bar.close()
    manifest = added.record
    if args.json:
        replaced = added.replaced is not None
        _print_json({**manifest.summary(), "replaced": replaced, "deleted": list(added.deleted)})
        return 0
    shards = len(manifest.shards)
    print(
        f"added dataset {manifest.name}: {_count(manifest.count, 'item')} of kind "
        f"{manifest.kind} (for models with preprocess {manifest.preprocess}) in "
        f"{_count(shards, 'shard')}, "
        f"{human(manifest.size)} ({time.monotonic() - t0:.1f} s)"
    )
    first = ", ".join(manifest.item_ids[:3]) + (", ..." if manifest.count > 3 else "")
    print(f"query ids: {note} (first: {first})")
    _say_replaced(
        added.replaced is not None, f"dataset {manifest.name}", catalog.manifest_file(manifest.name)
    )
    if added.deleted:
        print(f"deleted {len(added.deleted)} shards the new version no longer uses")
    return 0


def cmd_dataset_add(args: argparse.Namespace, client: ClientFactory) -> int:
    from idunno.inference import catalog

    name = catalog.validate_name(args.name, "dataset")
    if args.builtin:
        if args.path is not None:
            raise _Usage("give either PATH or --builtin, not both")
        if name not in catalog.BUILTIN_DATASETS:
            raise catalog.CatalogError(
                f"{name!r} is not a built-in dataset: the built-in one is digits "
                "(`idunno dataset add digits --builtin`); for photos use `idunno dataset sample`"
            )
        from idunno.inference.digits import digit_items

        items = list(digit_items())
        return _upload(
            args,
            client,
            "digits",
            iter(items),
            len(items),
            "scikit-learn load_digits: 1797 8x8 digits, 64 bytes each (values 0..16)",
            (64,),
            "row numbers of scikit-learn's digits",
        )
    if args.path is None:
        raise _Usage("give the PATH of a folder, a glob or a file, or --builtin for digits")
    source = catalog.scan_local(args.path)
    if source.skipped:
        one = len(source.skipped) == 1
        if source.kind == "jpeg":
            what = "is not an image" if one else "are not images"
        else:
            what = "is not a .npy array" if one else "are not .npy arrays"
        shown = ", ".join(source.skipped[:5]) + (", ..." if len(source.skipped) > 5 else "")
        _warn(f"skipped {_count(len(source.skipped), 'file')} that {what}: {shown}")
    base = {"folder": "the folder", "glob": "the glob's folder", "file": "its folder"}
    note = (
        f"file paths relative to {base[source.what]}, sorted"
        if source.kind == "jpeg"
        else "row numbers, counting across the .npy files in sorted path order"
    )
    return _upload(
        args,
        client,
        source.kind,
        catalog.local_items(source),
        source.count,
        source.origin,
        source.item_shape,
        note,
    )


def cmd_dataset_sample(args: argparse.Namespace, client: ClientFactory) -> int:
    from idunno.inference import catalog

    catalog.validate_name(args.name, "dataset")
    if not 1 <= args.count <= MAX_SAMPLE:
        raise _Usage(f"--count must be 1..{MAX_SAMPLE}, got {args.count}")
    from idunno.inference.images import sample_images

    return _upload(
        args,
        client,
        "jpeg",
        sample_images(args.count, args.seed),
        args.count,
        f"sample_images(count={args.count}, seed={args.seed}): distinct 224x224 JPEG photos",
        None,
        "image ids",
    )


def _dataset_rows(manifests: Iterable[DatasetManifest]) -> list[list[str]]:
    return [
        [
            m.name,
            m.kind,
            m.preprocess,
            str(m.count),
            str(len(m.shards)),
            human(m.size),
            format_time(m.added_at),
        ]
        for m in manifests
    ]


DATASET_HEADERS = ["NAME", "KIND", "PREPROCESS", "ITEMS", "SHARDS", "SIZE", "ADDED"]


def cmd_dataset_list(args: argparse.Namespace, client: ClientFactory) -> int:
    from idunno.inference import catalog

    if args.name is not None:
        catalog.validate_name(args.name, "dataset")
        m = catalog.Catalog(client(args)).dataset(args.name)
        if args.json:
            _print_json(m.to_json())
            return 0
        first = ", ".join(m.item_ids[:5]) + (", ..." if m.count > 5 else "")
        print(table(DATASET_HEADERS, _dataset_rows([m])))
        print(f"origin: {m.origin}")
        if m.item_shape is not None:
            print(f"item shape: {catalog.show_shape(m.item_shape)} (each item)")
        print(f"query ids: {first}")
        rows = [
            [s.name, str(s.version), str(start), str(n), human(s.size), s.sha256[:16]]
            for s, start, n in m.shard_ranges()
        ]
        print(table(["SHARD", "VERSION", "FIRST ITEM", "ITEMS", "SIZE", "SHA256"], rows))
        return 0
    manifests, problems = catalog.Catalog(client(args)).datasets()
    for p in problems:
        _warn(p)
    if args.json:
        _print_json({"datasets": [m.summary() for m in manifests]})
        return 0
    print(table(DATASET_HEADERS, _dataset_rows(manifests)))
    if not manifests:
        print(
            "(no datasets yet: `idunno dataset sample NAME --count N`, "
            "`idunno dataset add digits --builtin` or `idunno dataset add NAME FOLDER`)"
        )
    return 0


# --- registration ----------------------------------------------------------------------------


def _group(add: AddParser, name: str, help_: str) -> Callable[..., argparse.ArgumentParser]:
    """`idunno NAME ACTION ...`: returns add_action(action, fn, help, listing=False)."""
    parent = add(name, _no_action, help_, common=False)
    sub = parent.add_subparsers(
        dest=f"{name}_action", metavar="ACTION", required=True, parser_class=type(parent)
    )

    def add_action(
        action: str, fn: Callable[[argparse.Namespace], int], help_: str, listing: bool = False
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            action,
            help=help_.split("\n\n", maxsplit=1)[0],
            description=help_,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(fn=fn)
        add_cluster_options(p, listing)
        return p

    return add_action


def _no_action(args: argparse.Namespace) -> int:  # pragma: no cover - argparse requires ACTION
    raise _Usage("give an ACTION (see --help)")


def register_models(add: AddParser, client: ClientFactory) -> None:
    def bind(fn: Callable[[argparse.Namespace, ClientFactory], int]) -> Callable[..., int]:
        return lambda args: fn(args, client)

    action = _group(add, "model", "models in the store: add, list")
    p = action(
        "add",
        bind(cmd_model_add),
        "store an ONNX classifier as NAME (models/NAME.onnx + models/NAME.json)\n\n"
        "  idunno model add NAME FILE.onnx [--preprocess P] [--labels FILE]\n"
        "  idunno model add NAME --builtin\n\n"
        "FILE must be an ONNX model with one float32 input and a float32 [N, classes] output;\n"
        "the batch dimension may be fixed or dynamic. --builtin builds a zoo model offline:\n"
        "  resnet18, alexnet     ImageNet architectures with seeded random weights: UNTRAINED,\n"
        "                        real compute cost, meaningless labels\n"
        "  digits_logreg, digits_mlp   trained on scikit-learn's digits; accuracy recorded\n"
        "An existing NAME is replaced (every file gets a new store version).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", metavar="FILE", nargs="?", help="the .onnx file (omit with --builtin)")
    p.add_argument(
        "--builtin",
        action="store_true",
        help=f"build the zoo model NAME offline ({BUILTIN_MODELS_HELP})",
    )
    p.add_argument(
        "--preprocess",
        choices=["imagenet", "digits", "none"],
        help="how items become the input: imagenet (images -> [N, 3, 224, 224]), digits "
        "([N, 64]) or none (raw float32 items of the input's shape); default: what the "
        "input shape implies",
    )
    p.add_argument("--labels", metavar="FILE", help="class labels, one per line, one per class")
    p = action(
        "list",
        bind(cmd_model_list),
        "the stored models (trained or not, test accuracy), or NAME in detail",
        listing=True,
    )
    p.add_argument("name", metavar="NAME", nargs="?")


def register_datasets(add: AddParser, client: ClientFactory) -> None:
    def bind(fn: Callable[[argparse.Namespace, ClientFactory], int]) -> Callable[..., int]:
        return lambda args: fn(args, client)

    action = _group(add, "dataset", "datasets in the store: add, sample, list")
    p = action(
        "add",
        bind(cmd_dataset_add),
        "store a dataset as NAME (datasets/NAME/manifest.json + shard-00000.bin ...)\n\n"
        "  idunno dataset add NAME PATH\n"
        "  idunno dataset add digits --builtin\n\n"
        "PATH is a folder (walked recursively, hidden files ignored), a quoted glob such as\n"
        "'photos/*.jpg', or one file. Images (anything Pillow opens: JPEG, PNG, ...) are stored\n"
        "as they are; query ids are their paths relative to the folder (or to the glob's\n"
        "directory). Files that are not images are skipped with a warning. If there are .npy\n"
        "arrays, each row is an item (float32), with ids 0, 1, ... across the files in sorted\n"
        "path order. --builtin digits stores scikit-learn's 1,797 digits (ids 0..1796).\n"
        "An existing NAME is replaced (every file gets a new store version).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("path", metavar="PATH", nargs="?", help="folder, glob or file")
    p.add_argument(
        "--builtin", action="store_true", help="the built-in dataset NAME (only: digits)"
    )
    p = action(
        "sample",
        bind(cmd_dataset_sample),
        "make N distinct 224x224 JPEG photos offline and store them as dataset NAME\n\n"
        "The photos are seeded variants of scikit-learn's two sample photos; ids are\n"
        "img_000000.jpg, img_000001.jpg, ... and the same seed always gives the same photos.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--count", type=int, required=True, metavar="N", help="how many photos")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed (default 0)")
    p = action(
        "list",
        bind(cmd_dataset_list),
        "the stored datasets, or NAME in detail (shards, first ids)",
        listing=True,
    )
    p.add_argument("name", metavar="NAME", nargs="?")
