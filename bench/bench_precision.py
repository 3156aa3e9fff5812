"""fp16 copy against the card's fp32 file: images per second at batch 1, 8 and 32, on whatever
execution provider onnxruntime offers first (CUDA on a GPU machine, else the CPU).

The model is the seeded DenseNet-121 with the CheXNet head, installed in a temporary registry;
its fp16 copy is made and checked exactly as ``radlight models fp16`` does (models/precision.py)
on the real DICOM chest X-rays in ../shared/assets/dicom, and the check's figures are printed.
Each batch repeats those real images. Both precisions run through ``models.runtime`` as the
worker runs them, call by call alternating; medians. The reference is the fp32 file in the same
run; the ratio is fp16 images/s over fp32 images/s.
Run: ``python -m bench.bench_precision`` (``--batches 1 8 32 --repeats 7``).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pydicom

from bench.stack import SOURCE, machine
from models.export import build_untrained_chexnet
from models.precision import make_fp16_copy, prepared_batch, with_precision
from models.preprocess import prepare_image
from models.registry import ModelRegistry
from models.runtime import available_providers, load_model
from workers.imaging import load_frontal_chest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        built = build_untrained_chexnet(Path(tmp) / "built")
        entry = ModelRegistry(Path(tmp) / "models").install(built.onnx_path, built.card)
        images = [
            prepare_image(load_frontal_chest(pydicom.dcmread(path)), entry.card.preprocessing)
            for path in sorted(SOURCE.parent.glob("*.dcm"))
        ]
        check = make_fp16_copy(entry, prepared_batch(image.tensor for image in images))
        models = {"fp32": load_model(entry), "fp16": load_model(with_precision(entry, "fp16"))}
        print(
            f"# DenseNet-121 (CheXNet head, seeded), onnxruntime {ort.__version__} "
            f"{available_providers()[0]}, {machine()}"
        )
        print(f"# fp16 check: {check.summary()}")
        print(f"# images/s, medians of {args.repeats} calls per precision, alternating")
        print("| batch | fp32 images/s | fp16 images/s | fp16 / fp32 |")
        print("|---|---|---|---|")
        for size in args.batches:
            batch = np.stack([images[i % len(images)].tensor for i in range(size)])
            for model in models.values():
                model.infer(batch)  # warm-up: allocations, kernel choice
            seconds: dict[str, list[float]] = {name: [] for name in models}
            for _ in range(args.repeats):
                for name, model in models.items():
                    start = time.perf_counter()
                    model.infer(batch)
                    seconds[name].append(time.perf_counter() - start)
            rates = {name: size / statistics.median(times) for name, times in seconds.items()}
            print(
                f"| {size} | {rates['fp32']:.1f} | {rates['fp16']:.1f} | "
                f"{rates['fp16'] / rates['fp32']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
