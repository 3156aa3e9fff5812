"""The pediatric pneumonia demo model, built on the user's machine from PyPI.

The only trained chest X-ray weights installable here come from the PyPI package
``pneumonia-model-package`` 0.3.0: a Keras Xception (frozen ImageNet backbone, small trained head)
that tells NORMAL from PNEUMONIA on **pediatric** AP chest X-rays (Kermany et al., Guangzhou,
children aged 1-5). **No licence is granted** for those weights, so RadLight never ships them or
the ONNX file derived from them: :func:`build_pneumonia_demo` downloads the package with
``--no-deps``, checks its sha256, installs the pinned Keras it needs into a private folder,
converts it (models.pneumonia_convert, in a child process) and checks the ONNX file's sha256.

Everything lives under one build folder (``<data>/build/pneumonia-demo`` by default)::

    wheels/       the downloaded wheel (sha256-checked)
    package/      the wheel installed with ``pip install --no-deps --target``
    keras-deps/   Keras 3.15.1 and its pure dependencies, ``--no-deps --target`` (torch, numpy,
                  onnx and onnxscript come from RadLight's own environment, never reinstalled)
    out/          model.onnx and card.yaml

Each step is skipped when its result is already there and checks out, so a second build is quick.
The figures of the model's card (13/16 correct, AUROC 0.906 on the 16 pediatric ``val`` JPEGs that
ship in the wheel) are reproduced by :func:`evaluate_bundled` (``radlight models evaluate-demo``).
"""

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.card import (
    CARD_FILE_NAME,
    ONNX_FILE_NAME,
    TASK_CHEST_XRAY_CLASSIFICATION,
    HeatmapOutputNames,
    InputContract,
    LabelSpec,
    ModelCard,
    Preprocessing,
    Provenance,
    labels_with_codes,
)
from models.checksum import sha256_file
from models.export import BuiltModel
from models.preprocess import prepare_image
from models.runtime import HeatmapModel
from radlight.errors import ModelError, ModelIntegrityError

logger = logging.getLogger(__name__)

NAME: Final = "pneumonia-xception-demo"
VERSION: Final = "0.3.0"
PACKAGE: Final = "pneumonia-model-package==0.3.0"
WHEEL_NAME: Final = "pneumonia_model_package-0.3.0-py3-none-any.whl"
WHEEL_SHA256: Final = "4bb1ee80366db5de818c7255e62878871b8ec545681193f429e2575b791d3536"
KERAS_FILE: Final = (
    "pneumonia_model_package/trained_models/pneumonia_xception_model_val-acc_0.861.keras"
)
KERAS_SHA256: Final = "d7997cd1923f4d13538f02d64b6d5925e2f87a2a2db8036c074f795c41439e26"
ONNX_SHA256: Final = "cb7fbeb825b7c63e57c8cffd5cc933fb8d5f8ad101c31622a97711597edde4ee"
VAL_IMAGES: Final = "pneumonia_model_package/datasets/pneumonia-data/val"
# Keras 3.15.1 and what it needs beyond RadLight's environment (numpy, torch), as the recipe used.
KERAS_REQUIREMENTS: Final = (
    "keras==3.15.1",
    "absl-py==2.5.1",
    "h5py==3.16.0",
    "ml-dtypes==0.6.0",
    "namex==0.1.0",
    "optree==0.20.0",
    "packaging==26.3",
    "rich==15.0.0",
    "markdown-it-py==4.3.0",
    "mdurl==0.1.2",
    "pygments==2.21.0",
    "typing-extensions==4.16.0",
)
LABEL_COLUMN: Final = 1  # probs[:, 1] is PNEUMONIA (index 0 is NORMAL)
AGE_RANGE_YEARS: Final = (1, 5)
GOLDEN_TOLERANCE: Final = 1e-3
# p(PNEUMONIA) of the 16 bundled val JPEGs (shared/assets/models/README.md, 4 decimals).
GOLDEN_PROBABILITIES: Final[Mapping[str, float]] = {
    "NORMAL2-IM-1427-0001.jpeg": 0.2501,
    "NORMAL2-IM-1430-0001.jpeg": 0.0329,
    "NORMAL2-IM-1431-0001.jpeg": 0.3531,
    "NORMAL2-IM-1436-0001.jpeg": 0.3731,
    "NORMAL2-IM-1437-0001.jpeg": 0.0554,
    "NORMAL2-IM-1438-0001.jpeg": 0.9533,
    "NORMAL2-IM-1440-0001.jpeg": 0.0476,
    "NORMAL2-IM-1442-0001.jpeg": 0.3666,
    "person1946_bacteria_4874.jpeg": 0.9995,
    "person1946_bacteria_4875.jpeg": 0.9850,
    "person1947_bacteria_4876.jpeg": 0.9953,
    "person1949_bacteria_4880.jpeg": 0.4519,
    "person1950_bacteria_4881.jpeg": 0.3176,
    "person1951_bacteria_4882.jpeg": 0.9607,
    "person1952_bacteria_4883.jpeg": 0.9998,
    "person1954_bacteria_4886.jpeg": 0.5252,
}
GOLDEN_CORRECT: Final = 13
GOLDEN_AUROC: Final = 0.906

PREPROCESSING = Preprocessing(
    kind="keras-xception-nhwc",
    input_size=150,
    resize_short_side=150,
    crop="none",
    interpolation="nearest",
    rescale="uint8_to_symmetric",
    channels="gray_to_rgb",
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
)
OUTPUTS = HeatmapOutputNames(
    input="input", probabilities="probs", label_columns=(LABEL_COLUMN,), heatmap="gradcam"
)
INPUT = InputContract(
    modalities=("DX", "CR"),
    view_positions=("AP", "PA"),
    body_part="CHEST",
    photometric_interpretation="MONOCHROME2",
    age_range_years=AGE_RANGE_YEARS,
    population="pediatric demo model",
)
Report = Callable[[str], None]


def default_build_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "build" / "pneumonia-demo"


def build_pneumonia_demo(
    build_dir: Path,
    *,
    accept_different_hash: bool = False,
    report: Report | None = None,
) -> BuiltModel:
    """Download, check, convert and describe the demo model; return its ONNX file and card.

    Raises ModelIntegrityError when a downloaded file or the ONNX output has an unexpected sha256
    (the latter unless ``accept_different_hash``, which instead requires the golden figures), and
    ModelError when a step fails.
    """
    say = report or logger.info
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    keras_file = ensure_package(build_dir, say)
    out_dir = build_dir / "out"
    onnx_path = out_dir / ONNX_FILE_NAME
    if not (onnx_path.is_file() and sha256_file(onnx_path) == ONNX_SHA256):
        deps = _ensure_keras(build_dir, say)
        say("converting Keras -> ONNX (about a minute, about 1 GB of memory)")
        _convert(keras_file, onnx_path, deps)
    sha256 = sha256_file(onnx_path)
    figures = evaluate_bundled(onnx_path, sha256, images_dir(build_dir))
    if sha256 != ONNX_SHA256:
        if not accept_different_hash:
            raise ModelIntegrityError(
                f"the converted model {onnx_path} has sha256 {sha256}, expected {ONNX_SHA256}. "
                "The conversion is deterministic for the versions in "
                "shared/assets/models/README.md (torch 2.13.0, onnx 1.23.2, onnxscript 0.7.2, "
                "onnx-ir 1.1.0, keras 3.15.1); other versions may write other bytes with the same "
                "numbers. Run again with --accept-different-hash to accept this file if it "
                "reproduces the golden probabilities of the 16 bundled images instead. "
                f"(Largest difference from them now: {figures.max_golden_difference:.2g}.)"
            )
        say(f"accepting sha256 {sha256} (differs from {ONNX_SHA256}); checking golden figures")
    if figures.max_golden_difference > GOLDEN_TOLERANCE:
        raise ModelError(
            f"the converted model misses the golden probabilities by "
            f"{figures.max_golden_difference:.3g} (tolerance {GOLDEN_TOLERANCE})"
        )
    say(
        f"golden figures reproduced: {figures.correct}/{len(figures.rows)} correct, "
        f"AUROC {figures.auroc:.3f}, largest difference {figures.max_golden_difference:.2g}"
    )
    card = demo_card(sha256)
    card_path = out_dir / CARD_FILE_NAME
    card.save(card_path)
    return BuiltModel(onnx_path=onnx_path, card_path=card_path, card=card)


def demo_card(sha256: str) -> ModelCard:
    """The demo model's card, for a converted file with ``sha256``."""
    (label,) = labels_with_codes(["Pneumonia"])
    differs = "" if sha256 == ONNX_SHA256 else f" (the reference conversion gives {ONNX_SHA256})"
    return ModelCard(
        card_format=1,
        name=NAME,
        version=VERSION,
        task=TASK_CHEST_XRAY_CLASSIFICATION,
        trained=True,
        labels=(LabelSpec(name=label.name, code=label.code, threshold=0.5),),
        input=INPUT,
        preprocessing=PREPROCESSING,
        interface="probabilities-heatmap/1",
        outputs=OUTPUTS,
        onnx_file=ONNX_FILE_NAME,
        sha256=sha256,
        provenance=Provenance(
            source=f"PyPI {PACKAGE} ({WHEEL_NAME}, sha256 {WHEEL_SHA256}), file {KERAS_FILE}",
            description=(
                "Keras Xception (ImageNet backbone, frozen) + GAP + Dense(128, relu) + Dense(2), "
                "trained by the package author on Kermany et al. 2018 pediatric AP chest X-rays "
                "(Guangzhou Women and Children's Medical Center, children aged 1-5; Kaggle "
                "paultimothymooney/chest-xray-pneumonia); checkpoint chosen on that set's test "
                f"split. .keras sha256 {KERAS_SHA256}; converted on this machine without "
                "TensorFlow (Keras 3 on torch, torch.onnx dynamo exporter, opset 18, IR 8) to "
                f"ONNX sha256 {sha256}{differs}. The label Pneumonia is probs[:, 1]; the heatmap "
                "is an exact in-graph Grad-CAM (5x5) of the PNEUMONIA log-odds. NO LICENCE is "
                "stated for these weights (no LICENSE file in the wheel or upstream repository): "
                "do not redistribute the model or results derived from it."
            ),
            source_sha256=KERAS_SHA256,
        ),
        intended_use=(
            "DEMO ONLY, not for clinical use: exercises the node with real trained weights on "
            "pediatric chest X-rays (ages 1-5, AP). Pediatric pneumonia demo model, not "
            "validated. No licence is granted for its weights."
        ),
        limitations=(
            "Trained on pediatric AP chest X-rays (Kermany et al., Guangzhou, ages 1-5) only.",
            "NOT validated on adults: on 34 adult NIH images its pneumonia AUROC is 0.49 (chance) "
            "and its score tracks AP versus PA projection (AUROC 0.89 for AP).",
            "13/16 correct (AUROC 0.906) on the 16 held-out pediatric val images; the "
            "checkpoint was selected on the test split, so no unbiased accuracy is known.",
            "Input is 150x150 NEAREST-resized; other resampling shifts scores a lot.",
            "The Grad-CAM heatmap is 5x5 (one cell per ~1/5 of the image) and did not localise "
            "2 of 3 NIH pneumonia boxes.",
            "No licence is granted for the weights; not a medical device.",
        ),
        not_for_primary_diagnosis=True,
    )


def ensure_package(build_dir: Path, say: Report) -> Path:
    """The wheel installed (``--no-deps``) under ``build_dir/package``; returns the .keras file."""
    package_dir = build_dir / "package"
    keras_file = package_dir / KERAS_FILE
    if keras_file.is_file() and sha256_file(keras_file) == KERAS_SHA256:
        return keras_file
    wheels = build_dir / "wheels"
    wheel = wheels / WHEEL_NAME
    if not (wheel.is_file() and sha256_file(wheel) == WHEEL_SHA256):
        say(f"downloading {PACKAGE} (83 MB) with pip --no-deps")
        _pip("download", "--no-deps", "--only-binary=:all:", "--dest", str(wheels), PACKAGE)
    actual = sha256_file(wheel) if wheel.is_file() else "(no file)"
    if actual != WHEEL_SHA256:
        raise ModelIntegrityError(f"{wheel} has sha256 {actual}, expected {WHEEL_SHA256}")
    _pip(
        "install",
        "--no-deps",
        "--no-compile",
        "--upgrade",
        "--target",
        str(package_dir),
        str(wheel),
    )
    actual = sha256_file(keras_file) if keras_file.is_file() else "(no file)"
    if actual != KERAS_SHA256:
        raise ModelIntegrityError(f"{keras_file} has sha256 {actual}, expected {KERAS_SHA256}")
    return keras_file


def images_dir(build_dir: Path) -> Path:
    """Where the 16 pediatric val JPEGs of the installed wheel are."""
    return Path(build_dir) / "package" / VAL_IMAGES


def _ensure_keras(build_dir: Path, say: Report) -> Path:
    """Pinned Keras and its pure dependencies in ``build_dir/keras-deps`` (``--no-deps``)."""
    target = build_dir / "keras-deps"
    marker = target / ".radlight-requirements"
    wanted = "\n".join(KERAS_REQUIREMENTS) + "\n"
    if marker.is_file() and marker.read_text(encoding="utf-8") == wanted:
        return target
    say(f"installing {', '.join(KERAS_REQUIREMENTS)} into {target} (--no-deps)")
    _pip(
        "install",
        "--no-deps",
        "--no-compile",
        "--upgrade",
        "--target",
        str(target),
        *KERAS_REQUIREMENTS,
    )
    marker.write_text(wanted, encoding="utf-8")
    return target


def _convert(keras_file: Path, onnx_path: Path, deps: Path) -> None:
    """Run models.pneumonia_convert in a child process with the private Keras on its path."""
    code_root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(deps), str(code_root), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["KERAS_BACKEND"] = "torch"
    env["KERAS_HOME"] = str(deps.parent / "keras-home")
    partial = onnx_path.with_name(f".{onnx_path.name}.partial")
    command = [sys.executable, "-m", "models.pneumonia_convert", str(keras_file), str(partial)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ModelError(
            f"converting {keras_file} failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
    partial.replace(onnx_path)


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ModelError(f"pip {args[0]} failed:\n{(result.stderr or result.stdout)[-3000:]}")


@dataclass(frozen=True)
class FigureRow:
    file: str
    truth: str  # NORMAL or PNEUMONIA (from the file name)
    probability: float
    golden: float | None

    @property
    def predicted(self) -> str:
        return "PNEUMONIA" if self.probability > 0.5 else "NORMAL"


@dataclass(frozen=True)
class DemoFigures:
    rows: tuple[FigureRow, ...]

    @property
    def correct(self) -> int:
        return sum(row.predicted == row.truth for row in self.rows)

    @property
    def accuracy(self) -> float:
        return self.correct / len(self.rows)

    @property
    def auroc(self) -> float:
        truth = np.array([row.truth == "PNEUMONIA" for row in self.rows])
        return auroc(np.array([row.probability for row in self.rows]), truth)

    @property
    def max_golden_difference(self) -> float:
        missing = set(GOLDEN_PROBABILITIES) - {row.file for row in self.rows}
        if missing:
            return float("inf")
        return max(abs(row.probability - row.golden) for row in self.rows if row.golden is not None)


def auroc(scores: npt.NDArray[np.floating], positive: npt.NDArray[np.bool_]) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half)."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        raise ValueError("AUROC needs positives and negatives")
    greater = (pos[:, np.newaxis] > neg[np.newaxis, :]).sum()
    ties = (pos[:, np.newaxis] == neg[np.newaxis, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def load_gray_jpeg(path: Path) -> npt.NDArray[np.uint8]:
    """A bundled JPEG as the node's 8-bit display image (they are all 8-bit grayscale)."""
    with Image.open(path) as image:
        if image.mode != "L":
            raise ModelError(f"{path} is {image.mode}, not 8-bit grayscale")
        return np.asarray(image, dtype=np.uint8).copy()


def evaluate_bundled(onnx_path: Path, sha256: str, directory: Path) -> DemoFigures:
    """Run the model over the bundled val JPEGs through the node's own preprocessing."""
    files = sorted(Path(directory).glob("*.jpeg"))
    if not files:
        raise ModelError(f"no .jpeg files in {directory}")
    model = HeatmapModel.load(onnx_path, sha256=sha256, names=OUTPUTS)
    batch = np.stack([prepare_image(load_gray_jpeg(f), PREPROCESSING).tensor for f in files])
    probabilities = model.infer(batch).probabilities[:, 0]
    return DemoFigures(
        rows=tuple(
            FigureRow(
                file=f.name,
                truth="NORMAL" if f.name.startswith("NORMAL") else "PNEUMONIA",
                probability=float(p),
                golden=GOLDEN_PROBABILITIES.get(f.name),
            )
            for f, p in zip(files, probabilities, strict=True)
        )
    )
