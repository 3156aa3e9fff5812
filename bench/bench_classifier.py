"""Classifier throughput: RadLight's ONNX path against torch eager, same weights, same process.

Reports images per second for each batch size and the ratio ONNX / torch. Run: `make bench`
(or `python bench/bench_classifier.py --batches 1 8`). Figures go in docs/PERFORMANCE.md.
"""

import argparse
import platform
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


def images_per_second(run: Callable[[], object], batch: int, repeats: int) -> float:
    run()  # warm-up: allocations, kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return batch / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    module = chexnet(seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chexnet.onnx"
        sha256 = export_classifier_onnx(module, path)
        classifier = Classifier.load(path, sha256=sha256)
        print(
            f"# DenseNet-121 (CheXNet head), {platform.processor() or platform.machine()}, "
            f"torch {torch.__version__} threads={torch.get_num_threads()}, "
            f"onnxruntime {ort.__version__} {available_providers()[0]}"
        )
        print("| batch | torch eager img/s | ONNX Runtime img/s | ratio ONNX/torch |")
        print("|---|---|---|---|")
        rng = np.random.default_rng(0)
        for batch in args.batches:
            data = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
            tensor = torch.from_numpy(data)

            def run_torch(t: torch.Tensor = tensor) -> object:
                with torch.inference_mode():
                    return module(t)

            def run_onnx(d: np.ndarray = data) -> object:
                return classifier.predict(d)

            torch_ips = images_per_second(run_torch, batch, args.repeats)
            onnx_ips = images_per_second(run_onnx, batch, args.repeats)
            print(f"| {batch} | {torch_ips:.1f} | {onnx_ips:.1f} | {onnx_ips / torch_ips:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
