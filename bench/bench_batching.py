"""Dynamic batching across jobs: K concurrent jobs' single images through the batcher, against the
same K threads each running the model alone on the same session.

DenseNet-121 (CheXNet head, seeded weights) exported by RadLight's exporter and loaded as the
worker loads it (``models.runtime.Classifier``: session options, CAM matmul, head check). K caller
threads stand for K jobs of a threads-pool worker; each sends ``--images`` single-image requests
back to back:

- alone (the reference): every caller calls ``Classifier.infer`` itself, as without batching;
  onnxruntime runs the concurrent calls on the one session;
- batched: every caller calls the process's ``DynamicBatcher`` (``models/batching.py``, up to K
  images per run, waiting up to ``--wait-ms`` after a run's first image), which stacks what is
  waiting into one run;
- one batch of K from one thread, the best a batcher could do, for reference.

Prints images/s (medians of ``--rounds``, the ways alternating) and batched / alone; the mean
images per run shows how much the batcher gathered. On a CPU a batch does little (the cores are
busy either way); on a GPU it is the point (docs/PERFORMANCE.md, "Inference").
Run: ``python -m bench.bench_batching`` (``--callers 4 8``).
"""

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models.batching import BatchingPolicy, DynamicBatcher
from models.densenet import chexnet
from models.export import export_classifier_onnx
from models.runtime import Classifier, Inference, available_providers


def images_per_second(
    infer: Callable[[np.ndarray], Inference], callers: int, images: int, seed: int
) -> float:
    """``callers`` threads each sending ``images`` single-image requests; all images / wall time."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(callers, 1, 3, 224, 224)).astype(np.float32)
    start_line = threading.Barrier(callers + 1)

    def caller(index: int) -> None:
        start_line.wait()
        for _ in range(images):
            infer(inputs[index])

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return callers * images / (time.perf_counter() - started)


def one_batch_per_second(model: Classifier, callers: int, images: int, seed: int) -> float:
    batch = np.random.default_rng(seed).normal(size=(callers, 3, 224, 224)).astype(np.float32)
    started = time.perf_counter()
    for _ in range(images):
        model.infer(batch)
    return callers * images / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--images", type=int, default=8, help="requests per caller per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--wait-ms", type=float, default=2.0, help="the batcher's wait for more after the first"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chexnet.onnx"
        sha256 = export_classifier_onnx(chexnet(seed=0).eval(), path)
        model = Classifier.load(path, sha256=sha256)
        model.infer(np.zeros((1, 3, 224, 224), dtype=np.float32))  # warm-up
        print(
            f"# DenseNet-121 (CheXNet head), {os.cpu_count()} CPUs "
            f"(load {os.getloadavg()[0]:.1f}), onnxruntime {ort.__version__} "
            f"{available_providers()[0]}; images/s, medians of {args.rounds} rounds of "
            f"{args.images} single-image requests per caller, ways alternating; the batcher "
            f"waits up to {args.wait_ms:g} ms for more after a run's first image"
        )
        print(
            "| callers (jobs at once) | alone images/s | batched images/s | one batch of K "
            "images/s | batched / alone | images per batched run |"
        )
        print("|---|---|---|---|---|---|")
        for callers in args.callers:
            policy = BatchingPolicy(max_images=callers, wait_s=args.wait_ms / 1000)
            batcher = DynamicBatcher(model, policy)
            alone, batched, best = [], [], []
            for round_ in range(args.rounds):
                alone.append(images_per_second(model.infer, callers, args.images, round_))
                batched.append(images_per_second(batcher.infer, callers, args.images, round_))
                best.append(one_batch_per_second(model, callers, args.images, round_))
            per_run = callers * args.images * args.rounds / max(batcher.runs, 1)
            batcher.stop()
            a, b, c = (statistics.median(x) for x in (alone, batched, best))
            print(f"| {callers} | {a:.1f} | {b:.1f} | {c:.1f} | {b / a:.2f} | {per_run:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
