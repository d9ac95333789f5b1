"""ONNX Runtime throughput of the zoo models (not a timed test).

    .venv/bin/python bench/zoo_speed.py            # full run (about 3 minutes on 2 cores)
    .venv/bin/python bench/zoo_speed.py --quick    # smoke run: 1 round, short windows

Measures images/s of `resnet18` and `alexnet` (idunno.inference.zoo, seeded untrained weights:
the real compute cost) at batch 1, 8 and 32 with intra_op_num_threads = 1 and 2. Each
(model, threads) configuration runs in a fresh process (no shared thread pools or warm caches)
and the configurations are interleaved over rounds; the median round is reported.

Baselines measured in the same run (machines here are noisy; ratios are stable):
  sgemm     numpy float32 1024x1024 matmul GFLOP/s with the same thread count, in the same
            process, in chunks alternating with the model's; "x sgemm" = model GFLOP/s
            (2 x MACs x img/s) / sgemm GFLOP/s. Not a roofline: numpy's OpenBLAS may use an
            older kernel (e.g. Haswell AVX2) than ONNX Runtime's MLAS (AVX-512), so > 1 happens
  DESIGN.md the figures it quotes (ResNet18 61 img/s on one core and 118 on two; AlexNet 136 on
            one core at batch 8 and 248 on two), as measured/quoted ratios
Also times the worker's JPEG decode + ImageNet preprocessing and the sample-image generator.

Writes bench/results/zoo_speed.json, zoo_speed.md and zoo_speed.png; prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

import _report
from idunno.inference import zoo
from idunno.inference.images import preprocess_imagenet, sample_images

MODELS = ("resnet18", "alexnet")
THREADS = (1, 2)
BATCHES = (1, 8, 32)
# DESIGN.md, "Control plane and inference": (model, threads) -> (img/s, batch it names or None).
DESIGN_FIGURES: dict[tuple[str, int], tuple[float, int | None]] = {
    ("resnet18", 1): (61.0, None),
    ("resnet18", 2): (118.0, None),
    ("alexnet", 1): (136.0, 8),
    ("alexnet", 2): (248.0, 8),
}
DESIGN_HEADERS: tuple[str, ...] = (
    "model",
    "threads",
    "DESIGN.md img/s",
    "compared at",
    "median img/s",
)
DESIGN_HEADERS += ("best round", "ratio median / best")
WORKER_TIMEOUT_S = 600.0
CHUNKS = 4  # model/sgemm alternations per batch size


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- model cost ------------------------------------------------------------------------------


def macs_per_image(model_bytes: bytes) -> int:
    """Multiply-accumulates of one image through the Conv and Gemm nodes (shape inference with
    the batch dimension set to 1)."""
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load_model_from_string(model_bytes))
    shapes: dict[str, list[int]] = {}
    for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        shapes[v.name] = [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":  # out elements x (cin x kh x kw) per output
            total += int(np.prod(shapes[node.output[0]])) * int(np.prod(weights[node.input[1]][1:]))
        elif node.op_type == "Gemm":
            total += int(np.prod(weights[node.input[1]]))
    return total


# --- worker (one process per model and thread count) -------------------------------------------


def _sgemm(threads: int) -> Callable[[float], float]:
    """A timer of numpy float32 1024x1024 matmuls with `threads` BLAS threads: the machine's
    practical peak, measured in short chunks interleaved with the model's."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    n = 1024
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)

    def gflops(seconds: float) -> float:
        with threadpool_limits(limits=threads):
            a @ b  # warm-up
            runs, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds or runs < 2:
                a @ b
                runs += 1
        return 2 * n**3 * runs / elapsed / 1e9

    return gflops


def _model_chunk(session: Any, x: np.ndarray, seconds: float) -> tuple[list[float], float]:
    """Run batches for `seconds` (at least 2); per-batch wall times and the process CPU time."""
    times: list[float] = []
    cpu0, start = time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 2:
        t0 = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    return times, time.process_time() - cpu0


def time_batches(
    session: Any, inputs: np.ndarray, threads: int, seconds: float
) -> list[dict[str, Any]]:
    """Per batch size: CHUNKS model chunks, each followed by an sgemm chunk, so a busy machine
    slows both alike and their ratio stays meaningful."""
    sgemm = _sgemm(threads)
    rows = []
    for batch in BATCHES:
        x = np.ascontiguousarray(inputs[:batch])
        for _ in range(2):  # warm-up: first runs allocate and pick kernels
            session.run(None, {"input": x})
        times: list[float] = []
        rates, gflops, cpu = [], [], 0.0
        for _ in range(CHUNKS):
            chunk, chunk_cpu = _model_chunk(session, x, seconds / CHUNKS)
            times += chunk
            cpu += chunk_cpu
            rates.append(batch * len(chunk) / sum(chunk))
            gflops.append(sgemm(seconds / CHUNKS / 4))
        rows.append(
            {
                "batch": batch,
                "runs": len(times),
                "img_per_s": batch * len(times) / sum(times),
                "img_per_cpu_s": batch * len(times) / cpu,
                "cpu_share": cpu / sum(times) / threads,  # < 1: waiting, or others' load
                "batch_ms_p50": 1000 * _report.percentile(times, 50),
                "sgemm_gflops": statistics.median(gflops),
                "chunk_img_per_s": rates,
                "chunk_sgemm_gflops": gflops,
            }
        )
    return rows


def worker(model_path: Path, threads: int, seconds: float) -> dict[str, Any]:
    import onnxruntime as ort  # type: ignore[import-untyped]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(
        str(model_path), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    photos = [data for _, data in sample_images(max(BATCHES), seed=1)]
    inputs = preprocess_imagenet(photos)
    load = os.getloadavg()[0]
    batches = time_batches(session, inputs, threads, seconds)
    return {"loadavg_before": load, "loadavg_after": os.getloadavg()[0], "batches": batches}


def run_worker(model_path: Path, threads: int, seconds: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", str(model_path), "--threads", str(threads)]
    cmd += ["--seconds", str(seconds)]
    done = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {model_path.name} x{threads} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --- preprocessing -----------------------------------------------------------------------------


def pipeline_rates(count: int) -> dict[str, float]:
    """Images/s of sample_images (JPEG generation) and of preprocess_imagenet, one core."""
    list(sample_images(1, seed=2))  # loads the source photos once per process: not timed
    start = time.perf_counter()
    photos = [data for _, data in sample_images(count, seed=2)]
    generate = count / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(0, count, 32):
        preprocess_imagenet(photos[i : i + 32])
    preprocess = count / (time.perf_counter() - start)
    return {"sample_images_per_s": generate, "preprocess_per_s": preprocess}


def blas_info() -> str:
    from threadpoolctl import threadpool_info

    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(f"{i['internal_api']} {i['version']} ({i['architecture']})" for i in libs)


# --- report ----------------------------------------------------------------------------------


def summarize(
    rounds: list[dict[str, Any]], model: str, threads: int, macs: int
) -> list[dict[str, Any]]:
    """Per batch size, medians over rounds: img/s (wall), img per CPU-second, CPU share, and
    the model's GFLOP/s over that of the sgemm chunk timed right after each model chunk."""
    runs = [r for r in rounds if r["model"] == model and r["threads"] == threads]
    rows = []
    for i, batch in enumerate(BATCHES):
        cells = [r["batches"][i] for r in runs]
        rates = [c["img_per_s"] for c in cells]
        ratios = [
            rate * 2 * macs / 1e9 / gflops
            for c in cells
            for rate, gflops in zip(c["chunk_img_per_s"], c["chunk_sgemm_gflops"], strict=True)
        ]
        rows.append(
            {
                "model": model,
                "threads": threads,
                "batch": batch,
                "img_per_s": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
                "img_per_cpu_s": statistics.median(c["img_per_cpu_s"] for c in cells),
                "cpu_share": statistics.median(c["cpu_share"] for c in cells),
                "batch_ms_p50": statistics.median(c["batch_ms_p50"] for c in cells),
                "sgemm_gflops": statistics.median(c["sgemm_gflops"] for c in cells),
                "x_sgemm": statistics.median(ratios),
            }
        )
    return rows


def design_rows(rows: list[dict[str, Any]]) -> list[list[object]]:
    """DESIGN.md's figure against the median and the best round at the same setting (other
    load only ever slows a round down, so the best round is the idle-machine estimate)."""
    out: list[list[object]] = []
    for (model, threads), (quoted, batch) in DESIGN_FIGURES.items():
        mine = [r for r in rows if r["model"] == model and r["threads"] == threads]
        if batch is not None:
            row = next(r for r in mine if r["batch"] == batch)
        else:  # DESIGN.md names no batch: compare with our best batch
            row = max(mine, key=lambda r: r["max"])
        where = f"batch {row['batch']}" + ("" if batch else " (our best)")
        ratios = f"{row['img_per_s'] / quoted:.2f}x / {row['max'] / quoted:.2f}x"
        out.append([model, threads, quoted, where, row["img_per_s"], row["max"], ratios])
    return out


def markdown(data: dict[str, Any]) -> str:
    rows = data["results"]
    m = data["machine"]
    loads = [r[k] for r in data["raw_rounds"] for k in ("loadavg_before", "loadavg_after")]
    headers = ["model", "threads", "batch", "img/s", "min", "max", "img/CPU-s", "CPU share"]
    headers += ["ms/batch", "sgemm GFLOP/s", "x sgemm"]
    keys: tuple[str, ...] = ("model", "threads", "batch", "img_per_s", "min", "max")
    keys += ("img_per_cpu_s", "cpu_share", "batch_ms_p50", "sgemm_gflops", "x_sgemm")
    cells = [[f"{r[k]:.2f}" if k in ("cpu_share", "x_sgemm") else r[k] for k in keys] for r in rows]
    throughput = _report.table(headers, cells, digits=1)
    pipeline = data["pipeline"]
    lines = [
        "# Zoo model speed (ONNX Runtime, CPU)",
        "",
        f"{m['date']}, {m['cores']} cores ({m['cpu_model']}), onnxruntime {data['onnxruntime']},"
        f" numpy {data['numpy']}; {data['rounds']} round(s) x {data['seconds']} s per batch size,"
        " each (model, threads) in a fresh process, median round shown. Weights are seeded and"
        " UNTRAINED: the compute cost is real, the labels are not.",
        "",
        f"Command: `{data['command']}`",
        "",
        f"1-minute load average during the run: {min(loads):.1f} to {max(loads):.1f} on"
        f" {m['cores']} cores (above the core count, other work shared the machine).",
        "",
        "## Throughput",
        "",
        throughput,
        "",
        "- img/CPU-s: images per second of this process's CPU time (all its threads); with one"
        " thread it estimates the rate on an idle core even when the machine is busy.",
        "- CPU share: CPU time / (wall time x threads); below 1 the threads waited (for each"
        " other, or for other processes).",
        "- x sgemm: the model's GFLOP/s (2 x MACs x img/s) over numpy's float32 1024x1024"
        " matmul GFLOP/s with the same thread count, timed in chunks alternating with the"
        " model's (median of the chunk ratios), so machine load mostly cancels out. numpy's"
        f" BLAS here: {data['blas']}; ONNX Runtime's MLAS picks its own (AVX-512) kernels, so"
        " ratios above 1 are expected.",
        "- MACs per image: " + ", ".join(f"{k} {v / 1e9:.3f} G" for k, v in data["macs"].items()),
        "",
        "## Against DESIGN.md",
        "",
        _report.table(DESIGN_HEADERS, design_rows(rows), digits=1),
        "",
        "## Worker preprocessing (one core)",
        "",
        _report.table(
            ["step", "img/s"],
            [
                ["sample_images (generate 224x224 JPEGs)", pipeline["sample_images_per_s"]],
                ["preprocess_imagenet (decode + normalize)", pipeline["preprocess_per_s"]],
            ],
            digits=0,
        ),
    ]
    return "\n".join(lines)


def figure(rows: list[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, len(MODELS))
    width = 0.8 / len(THREADS)
    for ax, model in zip(axes, MODELS, strict=True):
        for j, threads in enumerate(THREADS):
            mine = [r for r in rows if r["model"] == model and r["threads"] == threads]
            xs = [i + j * width for i in range(len(BATCHES))]
            ax.bar(xs, [r["img_per_s"] for r in mine], width, label=f"{threads} thread(s)")
        for (name, threads), (quoted, _) in DESIGN_FIGURES.items():
            if name == model:
                ax.axhline(quoted, linestyle="--", linewidth=1, color=f"C{threads - 1}")
        ax.set_xticks([i + width / 2 for i in range(len(BATCHES))], [f"b{b}" for b in BATCHES])
        ax.set_title(f"{model} (dashed: DESIGN.md)")
        ax.set_ylabel("images/s")
        ax.legend()
    return fig


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 round, 1 s per batch size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per batch size")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.threads, args.seconds)))
        return 0
    if args.quick:
        args.rounds, args.seconds = 1, 1.0
    import onnxruntime as ort

    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="idunno-zoo-") as tmp:
        paths, macs = {}, {}
        for name in MODELS:
            model = zoo.build_model(name)
            macs[name] = macs_per_image(model)
            paths[name] = Path(tmp) / f"{name}.onnx"
            paths[name].write_bytes(model)
        for rnd in range(args.rounds):
            for name in MODELS:
                for threads in THREADS:
                    log(f"round {rnd + 1}/{args.rounds}: {name} x{threads} thread(s)")
                    result = run_worker(paths[name], threads, args.seconds)
                    rounds.append({"model": name, "threads": threads, "round": rnd, **result})
    results = [row for m in MODELS for t in THREADS for row in summarize(rounds, m, t, macs[m])]
    data: dict[str, Any] = {
        "machine": _report.machine_info(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "blas": blas_info(),
        "command": " ".join([".venv/bin/python", "bench/zoo_speed.py", *(argv or sys.argv[1:])]),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "macs": macs,
        "design_figures": {f"{m}@{t}": v for (m, t), v in DESIGN_FIGURES.items()},
        "results": results,
        "pipeline": pipeline_rates(64 if args.quick else 320),
        "raw_rounds": rounds,
    }
    text = markdown(data)
    paths_out = _report.write_results("zoo_speed", data, text, figure(results))
    print(text)
    log("wrote " + ", ".join(str(p) for p in paths_out.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
