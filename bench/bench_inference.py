"""The worker's model step against bare onnxruntime on the same model and input (torch eager beside).

Three ways to run DenseNet-121 (CheXNet head, seeded weights) on the same prepared batch:

- bare: ``onnxruntime.InferenceSession(path).run`` with default session options, nothing else;
- RadLight: ``models.runtime.load_model(...).infer`` as ``workers.analysis.analyse`` calls it —
  input checks, the sha256-verified cached session, the CAM-head consistency check and the
  per-label CAM matmul included;
- torch eager (``inference_mode``), for reference.

Prints the median milliseconds per batch (after a warm-up) and the ratio RadLight / bare; the goal
is ≤ 1.2 for batch 1 and 8. Calls alternate, with a pause after each (``SETTLE_S``).
Run: ``python -m bench.bench_inference`` (``--batches 1 8``).
"""

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models.densenet import chexnet
from models.export import export_classifier_onnx
from models.runtime import Classifier, available_providers

# After each timed call the bench waits this long, as a worker does other work between two
# inferences: onnxruntime's default session keeps its threads spinning on both cores for a while
# after a run, which would otherwise slow whichever call comes next.
SETTLE_S = 0.1


def timed_ms(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    elapsed = (time.perf_counter() - start) * 1e3
    time.sleep(SETTLE_S)
    return elapsed


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()
    run()  # warm-up: allocations, kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    torch.manual_seed(0)
    module = chexnet(seed=0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chexnet.onnx"
        sha256 = export_classifier_onnx(module, path)
        radlight = Classifier.load(path, sha256=sha256)
        bare = ort.InferenceSession(str(path), providers=available_providers())
        input_name = bare.get_inputs()[0].name
        print(
            f"# DenseNet-121 (CheXNet head), {os.cpu_count()} CPUs "
            f"(load {os.getloadavg()[0]:.1f}), torch {torch.__version__} "
            f"threads={torch.get_num_threads()}, onnxruntime {ort.__version__} "
            f"{available_providers()[0]}; median ms per batch, {args.repeats} alternating calls"
        )
        print(
            "| batch | bare onnxruntime ms | RadLight infer ms | torch eager ms | "
            "RadLight / bare | torch / bare |"
        )
        print("|---|---|---|---|---|---|")
        rng = np.random.default_rng(0)
        for batch in args.batches:
            data = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
            tensor = torch.from_numpy(data)

            def run_bare(d: np.ndarray = data) -> object:
                return bare.run(None, {input_name: d})

            def run_radlight(d: np.ndarray = data) -> object:
                return radlight.infer(d)

            def run_torch(t: torch.Tensor = tensor) -> object:
                with torch.inference_mode():
                    return module(t)

            # Alternating call by call, so that the shared machine's load falls on both alike.
            run_bare()
            run_radlight()
            bare_ms, ours_ms = [], []
            for _ in range(args.repeats):
                bare_ms.append(timed_ms(run_bare))
                ours_ms.append(timed_ms(run_radlight))
            b, r = statistics.median(bare_ms), statistics.median(ours_ms)
            t = median_ms(run_torch, max(3, args.repeats // 3))
            print(f"| {batch} | {b:.1f} | {r:.1f} | {t:.1f} | {r / b:.2f} | {t / b:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
