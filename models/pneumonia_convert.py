"""Convert pneumonia-model-package 0.3.0's Keras Xception to ONNX, without TensorFlow.

Run by :mod:`models.pneumonia_demo` in a child process whose ``PYTHONPATH`` holds the private
Keras install (``KERAS_BACKEND=torch``); nothing else imports this module. It follows the recipe
of ``shared/assets/models/README.md`` step for step (only the ``_cam`` variant is written), since
the output's sha256 depends on every detail: Keras 3 loads the ``.keras`` archive on its torch
backend, a ``torch.nn.Module`` wraps it with the classifier head and an exact in-graph Grad-CAM,
``torch.onnx.export(dynamo=True)`` exports it at opset 18, then the file is set to IR 8 (so older
onnxruntime builds load it), the exporter's per-node debug metadata (absolute paths) is dropped and
the provenance metadata is added.

Usage: ``KERAS_BACKEND=torch python -m models.pneumonia_convert MODEL.keras OUT.onnx``
"""

import hashlib
import importlib
import os
import sys
from pathlib import Path
from typing import Any

OUTPUT_NAMES = ("logits", "probs", "features", "cam_signed", "gradcam")
KERAS_SOURCE = (
    "PyPI pneumonia-model-package 0.3.0, "
    "pneumonia_model_package/trained_models/pneumonia_xception_model_val-acc_0.861.keras"
)


def convert(src: Path, out: Path) -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import numpy as np

    # Imported as Any: this script runs only in the build's child process, and typing Keras'
    # torch layers and the exporter's results buys nothing here.
    onnx: Any = importlib.import_module("onnx")
    torch: Any = importlib.import_module("torch")
    keras: Any = importlib.import_module("keras")
    km = keras.saving.load_model(str(src), compile=False)
    if keras.backend.backend() != "torch":
        raise SystemExit("Keras must run on its torch backend (KERAS_BACKEND=torch)")
    base = km.get_layer("xception")
    w1, b1 = [np.asarray(keras.ops.convert_to_numpy(w)) for w in km.get_layer("dense").weights]
    w2, b2 = [np.asarray(keras.ops.convert_to_numpy(w)) for w in km.get_layer("dense_1").weights]

    class Net(torch.nn.Module):  # type: ignore[misc]
        """Same computation as the Keras model at inference (Dropout = identity)."""

        def __init__(self, with_cam: bool) -> None:
            super().__init__()
            self.base = base
            self.with_cam = with_cam
            self.register_buffer("W1", torch.from_numpy(w1))
            self.register_buffer("b1", torch.from_numpy(b1))
            self.register_buffer("W2", torch.from_numpy(w2))
            self.register_buffer("b2", torch.from_numpy(b2))

        def forward(self, x: Any) -> Any:
            f = self.base(x, training=False)  # (N,5,5,2048) NHWC, block14_sepconv2_act
            g = f.mean(dim=(1, 2))  # GlobalAveragePooling2D
            h = g @ self.W1 + self.b1  # Dense(128) pre-activation
            a = torch.relu(h)
            logits = a @ self.W2 + self.b2  # Dense(2): 0 = NORMAL, 1 = PNEUMONIA
            probs = torch.softmax(logits, dim=-1)
            if not self.with_cam:
                return logits, probs
            # Grad-CAM of y = logit[1] - logit[0]; the head is piecewise linear, so
            # dy/dg = W1 @ (1[h>0] * (W2[:,1] - W2[:,0])) at every position (GAP).
            d = self.W2[:, 1] - self.W2[:, 0]
            alpha = ((h > 0).to(h.dtype) * d) @ self.W1.T  # (N,2048)
            cam_signed = torch.einsum("nhwk,nk->nhw", f, alpha)  # (N,5,5)
            gradcam = torch.relu(cam_signed)
            return logits, probs, f, cam_signed, gradcam

    x0 = torch.from_numpy(
        np.random.RandomState(0).uniform(-1, 1, (2, 150, 150, 3)).astype("float32")
    )
    ref = np.asarray(km.predict(x0.numpy(), verbose=0))
    net = Net(True).eval()
    with torch.no_grad():
        got = net(x0)[0].numpy()
    diff = float(np.abs(got - ref).max())
    print("torch-wrapper vs keras maxdiff", diff, flush=True)
    if diff > 1e-4:
        raise SystemExit(f"the torch wrapper differs from Keras by {diff}")
    batch = torch.export.Dim("batch", min=1, max=64)
    prog = torch.onnx.export(
        net,
        (x0,),
        input_names=["input"],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes={"x": {0: batch}},
        dynamo=True,
        opset_version=18,
        external_data=False,
    )
    prog.optimize()
    out.parent.mkdir(parents=True, exist_ok=True)
    prog.save(str(out), external_data=False)
    m = onnx.load(str(out))
    m.ir_version = 8
    for node in m.graph.node:
        del node.metadata_props[:]
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        del vi.metadata_props[:]
    for init in m.graph.initializer:
        del init.metadata_props[:]
    del m.graph.metadata_props[:]
    meta = {
        "source": KERAS_SOURCE,
        "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        "licence": (
            "none stated in the wheel (no LICENSE file, no License field); "
            "upstream GitHub repo has no LICENSE file"
        ),
        "training_data": (
            "Kermany et al. pediatric (age 1-5, Guangzhou) chest X-rays via Kaggle "
            "paultimothymooney/chest-xray-pneumonia"
        ),
        "labels": "NORMAL,PNEUMONIA",
        "input": (
            "NHWC float32 (N,150,150,3) RGB; PIL convert('RGB'), resize to 150x150 with "
            "NEAREST, then x/127.5-1"
        ),
        "outputs": ",".join(OUTPUT_NAMES),
        "intended_use": "demo/research only; not a medical device",
    }
    for key, value in meta.items():
        prop = m.metadata_props.add()
        prop.key, prop.value = key, value
    m.doc_string = (
        "Xception(ImageNet, frozen) + GAP + Dense(128,relu) + Dense(2) logits; "
        "softmax -> [NORMAL, PNEUMONIA]"
    )
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(out))
    print("saved", out, out.stat().st_size, flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write(__doc__.strip().splitlines()[-1] + "\n")
        return 2
    convert(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
