"""Checkpoint importers: each public format, written here exactly as its authors' code writes it.

torchvision and torchxrayvision are not installed, so the stand-in classes below are given the
real module paths (``torchvision.models.densenet._DenseLayer``, ``torchxrayvision.models.DenseNet``)
in fake modules that exist in ``sys.modules`` only while a file is written: the file then names
exactly the classes a real checkpoint names, and the importer must read it without them. The
torch reference outputs come from these stand-ins, which follow the original forward passes.
"""

import itertools
import os
import pickle
import subprocess
import sys
import types
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from models.card import ModelCard, labels_with_codes
from models.contract import PROBABILITIES_NAME
from models.export import BuiltModel
from models.importers import DEFAULT_NAMES, import_checkpoint
from models.importers.formats import FORMATS, XRV_DEFAULT_PATHOLOGIES, convert, normalise_key
from models.importers.safe_pickle import load_checkpoint
from models.labels import CHEST_XRAY14_LABELS
from models.preprocess import prepare_batch
from models.registry import ModelRegistry
from models.runtime import load_classifier
from radlight.errors import ModelError

BLOCKS = (6, 12, 24, 16)
TOLERANCE = 1e-4
OLD_LAYER_NAMES = ("norm.1", "relu.1", "conv.1", "norm.2", "relu.2", "conv.2")
NEW_LAYER_NAMES = ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2")


def _stand_in_densenet(module_name: str, *, dotted: bool, xrv: bool) -> dict[str, type]:
    """torchvision's (0.2 when ``dotted``) or torchxrayvision's DenseNet classes, named as theirs."""

    class _DenseLayer(nn.Sequential):
        def __init__(self, num_input: int, growth: int = 32, bn_size: int = 4) -> None:
            super().__init__()
            layers = (
                nn.BatchNorm2d(num_input),
                nn.ReLU(inplace=True),
                nn.Conv2d(num_input, bn_size * growth, kernel_size=1, stride=1, bias=False),
                nn.BatchNorm2d(bn_size * growth),
                nn.ReLU(inplace=True),
                nn.Conv2d(bn_size * growth, growth, kernel_size=3, stride=1, padding=1, bias=False),
            )
            names = OLD_LAYER_NAMES if dotted else NEW_LAYER_NAMES
            for name, layer in zip(names, layers, strict=True):
                self._modules[name] = layer  # add_module refuses torchvision 0.2's dotted names
            self.drop_rate = 0.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            new_features: torch.Tensor = super().forward(x)  # type: ignore[no-untyped-call]
            return torch.cat([x, new_features], 1)

    class _DenseBlock(nn.Sequential):
        def __init__(self, num_layers: int, num_input: int) -> None:
            super().__init__()
            for i in range(num_layers):
                self.add_module(f"denselayer{i + 1}", _DenseLayer(num_input + i * 32))

    class _Transition(nn.Sequential):
        def __init__(self, num_input: int, num_output: int) -> None:
            super().__init__()
            self.add_module("norm", nn.BatchNorm2d(num_input))
            self.add_module("relu", nn.ReLU(inplace=True))
            self.add_module("conv", nn.Conv2d(num_input, num_output, 1, stride=1, bias=False))
            self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))

    class DenseNet(nn.Module):
        def __init__(self, num_classes: int, in_channels: int) -> None:
            super().__init__()
            self.features = nn.Sequential(
                OrderedDict(
                    [
                        ("conv0", nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)),
                        ("norm0", nn.BatchNorm2d(64)),
                        ("relu0", nn.ReLU(inplace=True)),
                        ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                    ]
                )
            )
            num = 64
            for i, layers in enumerate(BLOCKS):
                self.features.add_module(f"denseblock{i + 1}", _DenseBlock(layers, num))
                num += layers * 32
                if i != len(BLOCKS) - 1:
                    self.features.add_module(f"transition{i + 1}", _Transition(num, num // 2))
                    num //= 2
            self.features.add_module("norm5", nn.BatchNorm2d(num))
            self.classifier: nn.Module = nn.Linear(num, num_classes)
            if xrv:
                self.register_buffer("op_threshs", None)
                self.apply_sigmoid = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.features(x)
            out = F.relu(features, inplace=True)
            out = F.adaptive_avg_pool2d(out, (1, 1)).view(features.size(0), -1)
            out = self.classifier(out)
            if xrv:  # torchxrayvision's forward, op_norm included
                if self.apply_sigmoid:
                    out = torch.sigmoid(out)
                threshs = self.op_threshs
                if threshs is not None:
                    assert isinstance(threshs, torch.Tensor)
                    out = xrv_op_norm(torch.sigmoid(out), threshs)
            return out

    classes: dict[str, type] = {
        "_DenseLayer": _DenseLayer,
        "_DenseBlock": _DenseBlock,
        "_Transition": _Transition,
        "DenseNet": DenseNet,
    }
    for name, cls in classes.items():
        cls.__module__ = module_name
        cls.__qualname__ = name
    return classes


def xrv_op_norm(outputs: torch.Tensor, op_threshs: torch.Tensor) -> torch.Tensor:
    """torchxrayvision.models.op_norm: each threshold maps to 0.5, linearly on either side."""
    threshs = op_threshs.expand(outputs.shape[0], -1)
    result = torch.zeros(outputs.shape) + 0.5
    below = (outputs < threshs) & ~torch.isnan(threshs)
    above = ~(outputs < threshs) & ~torch.isnan(threshs)
    result[below] = outputs[below] / (threshs[below] * 2)
    result[above] = 1.0 - ((1.0 - outputs[above]) / ((1 - threshs[above]) * 2))
    return result


@contextmanager
def fake_package(module_name: str, classes: dict[str, type]) -> Iterator[None]:
    """``module_name`` (and its parents) importable with ``classes`` for as long as we write."""
    parts = module_name.split(".")
    names = [".".join(parts[: i + 1]) for i in range(len(parts))]
    saved = {name: sys.modules.get(name) for name in names}
    try:
        for name in names:
            sys.modules[name] = types.ModuleType(name)
        for parent, child in itertools.pairwise(names):
            setattr(sys.modules[parent], child.rsplit(".", 1)[1], sys.modules[child])
        for name, cls in classes.items():
            setattr(sys.modules[module_name], name, cls)
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def randomise(model: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and biases, as a trained network has."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                count = module.num_features
                assert module.running_mean is not None
                assert module.running_var is not None
                module.weight.copy_(0.5 + torch.rand(count, generator=generator))
                module.bias.copy_(0.1 * torch.randn(count, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(count, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(count, generator=generator))
            elif isinstance(module, nn.Linear):
                module.bias.copy_(0.5 * torch.randn(module.bias.shape[0], generator=generator))


def save(obj: object, path: Path, *, legacy: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy saves try to read the stand-ins' source
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


@dataclass
class Written:
    """A checkpoint file and the torch module whose outputs the import must reproduce."""

    path: Path
    reference: nn.Module
    reference_probabilities: Any = None


def write_arnoweng(path: Path, *, legacy: bool = True, seed: int = 1) -> Written:
    """arnoweng/CheXNet: DataParallel(DenseNet121 wrapper).state_dict() under 'state_dict'."""
    classes = _stand_in_densenet("torchvision.models.densenet", dotted=True, xrv=False)
    torch.manual_seed(seed)
    network = classes["DenseNet"](1000, 3)
    network.classifier = nn.Sequential(nn.Linear(1024, 14), nn.Sigmoid())

    class DenseNet121(nn.Module):  # arnoweng's wrapper: self.densenet121 = torchvision's
        def __init__(self) -> None:
            super().__init__()
            self.densenet121 = network

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.densenet121(x)
            return out

    wrapped = nn.DataParallel(DenseNet121())
    randomise(wrapped, seed)
    # Written by torch 0.3: no BatchNorm ``num_batches_tracked`` yet.
    state_dict = OrderedDict(
        (k, v) for k, v in wrapped.state_dict().items() if not k.endswith("num_batches_tracked")
    )
    assert "module.densenet121.features.denseblock1.denselayer1.norm.1.weight" in state_dict
    assert "module.densenet121.classifier.0.weight" in state_dict
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=1e-3, betas=(0.9, 0.999))
    checkpoint = {
        "epoch": 7,
        "arch": "densenet121",
        "state_dict": state_dict,
        "best_loss": np.float64(0.1502),
        "optimizer": optimizer.state_dict(),
    }
    save(checkpoint, path, legacy=legacy)
    return Written(path, wrapped.module.eval())


def write_jrzech(
    path: Path, *, legacy: bool = True, seed: int = 2, extra: dict[str, object] | None = None
) -> Written:
    """jrzech/reproduce-chexnet: the whole torchvision model pickled in 'model'."""
    classes = _stand_in_densenet("torchvision.models.densenet", dotted=True, xrv=False)
    torch.manual_seed(seed)
    model = classes["DenseNet"](1000, 3)
    model.classifier = nn.Sequential(nn.Linear(1024, 14), nn.Sigmoid())
    randomise(model, seed)
    model.eval()
    state = {
        "model": model,
        "best_loss": 0.1503,
        "epoch": 8,
        "rng_state": torch.get_rng_state(),
        "LR": 0.001,
        **(extra or {}),
    }
    with fake_package("torchvision.models.densenet", classes):
        save(state, path, legacy=legacy)
    return Written(path, model)


def write_xrv(
    path: Path,
    *,
    legacy: bool = False,
    seed: int = 3,
    targets: list[str] | None = None,
    op_threshs: list[float] | None = None,
) -> Written:
    """torchxrayvision: torch.save(model) of its DenseNet (1 channel, 18 outputs)."""
    classes = _stand_in_densenet("torchxrayvision.models", dotted=False, xrv=True)
    torch.manual_seed(seed)
    model = classes["DenseNet"](18, 1)
    randomise(model, seed)
    if targets is not None:
        model.targets = targets
        model.pathologies = targets
    if op_threshs is not None:
        model.op_threshs = torch.tensor(op_threshs)
    model.eval()
    with fake_package("torchxrayvision.models", classes):
        save(model, path, legacy=legacy)
    return Written(path, model)


XRV_TARGETS = [*XRV_DEFAULT_PATHOLOGIES[:14], "", "", "", ""]  # an NIH-only file: 4 untrained
XRV_THRESHS = [0.02 + 0.01 * i for i in range(14)] + [float("nan")] * 4


def onnx_probabilities(built: BuiltModel, images: list[npt.NDArray[np.uint8]]) -> Any:
    batch, _ = prepare_batch(images, built.card.preprocessing)
    session = ort.InferenceSession(str(built.onnx_path), providers=["CPUExecutionProvider"])
    return batch, session.run([PROBABILITIES_NAME], {"image": batch})[0]


def torch_output(model: nn.Module, batch: Any) -> Any:
    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()


# --- each format: ONNX equals the original torch module on real NIH images ---------------------


def test_arnoweng_model_pth_tar(tmp_path: Path, nih_images: list[npt.NDArray[np.uint8]]) -> None:
    written = write_arnoweng(tmp_path / "model.pth.tar")
    built = import_checkpoint("arnoweng-chexnet", written.path, tmp_path / "out")
    batch, probabilities = onnx_probabilities(built, nih_images)
    assert batch.shape == (3, 3, 224, 224)
    expected = torch_output(written.reference, batch)
    assert np.abs(probabilities - expected).max() < TOLERANCE
    card = built.card
    assert card.trained
    assert card.name == DEFAULT_NAMES["arnoweng-chexnet"]
    assert card.label_names == CHEST_XRAY14_LABELS
    assert card.preprocessing.resize_short_side == 256
    assert card.preprocessing.input_size == 224
    assert card.provenance.source == "arnoweng-chexnet: model.pth.tar"
    assert card.provenance.source_sha256 is not None
    assert card.version == f"sha256-{card.provenance.source_sha256[:12]}"
    assert card.intended_use.startswith("As the original authors state; not validated by RadLight")


def test_jrzech_checkpoint(tmp_path: Path, nih_images: list[npt.NDArray[np.uint8]]) -> None:
    written = write_jrzech(tmp_path / "checkpoint", legacy=True)  # torch 0.3/0.4 wrote legacy files
    raw = (tmp_path / "checkpoint").read_bytes()
    for name in (b"torchvision.models.densenet", b"_DenseLayer", b"norm.1"):
        assert name in raw  # the file names exactly what a real checkpoint names
    assert "torchvision" not in sys.modules
    built = import_checkpoint(
        "jrzech-chexnet", written.path, tmp_path / "out", name="chexnet", version="1.0.0"
    )
    batch, probabilities = onnx_probabilities(built, nih_images)
    expected = torch_output(written.reference, batch)
    assert np.abs(probabilities - expected).max() < TOLERANCE
    assert (built.card.name, built.card.version) == ("chexnet", "1.0.0")
    assert built.card.label_names == CHEST_XRAY14_LABELS
    entry = ModelRegistry(tmp_path / "models").install(built.onnx_path, built.card)
    assert ModelRegistry(tmp_path / "models").get("chexnet").sha256 == entry.sha256


def test_jrzech_checkpoint_saved_by_a_newer_torch(tmp_path: Path) -> None:
    """The same model re-saved in torch's zip format converts to the same weights."""
    written = write_jrzech(tmp_path / "checkpoint", legacy=False)
    converted = convert("jrzech-chexnet", load_checkpoint(written.path), source="checkpoint")
    reference = {
        normalise_key(key).replace("classifier.0.", "classifier."): value
        for key, value in written.reference.state_dict().items()
    }
    assert converted.state_dict.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(converted.state_dict[key], value), key


def test_torchxrayvision_densenet(tmp_path: Path, nih_images: list[npt.NDArray[np.uint8]]) -> None:
    name = "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"
    written = write_xrv(tmp_path / name, targets=XRV_TARGETS, op_threshs=XRV_THRESHS)
    assert b"torchxrayvision.models" in (tmp_path / name).read_bytes()
    built = import_checkpoint("xrv-densenet121", written.path, tmp_path / "out")
    batch, probabilities = onnx_probabilities(built, nih_images)
    # xrv's own input: one plane in [-1024, 1024] (xrv.datasets.normalize(img, 255)).
    assert batch.shape == (3, 1, 224, 224)
    assert -1024.0 <= batch.min() < 0.0 < batch.max() <= 1024.0
    plain_model = written.reference
    plain_model.op_threshs = None  # type: ignore[assignment]
    plain_model.apply_sigmoid = True  # type: ignore[assignment]
    expected = torch_output(plain_model, batch)[:, :14]  # the 4 unlabelled outputs are dropped
    assert np.abs(probabilities - expected).max() < TOLERANCE

    card = built.card
    assert card.label_names == XRV_DEFAULT_PATHOLOGIES[:14]
    assert card.preprocessing.kind == "xrv-gray"
    assert [label.threshold for label in card.labels] == pytest.approx(XRV_THRESHS[:14])
    assert "were dropped" in card.provenance.description
    # The card's thresholds decide as xrv's op_norm does (op_norm >= 0.5 iff p >= threshold).
    plain_model.op_threshs = torch.tensor(XRV_THRESHS)
    plain_model.apply_sigmoid = False  # type: ignore[assignment]
    normalised = torch_output(plain_model, batch)[:, :14]
    thresholds = np.array([label.threshold for label in card.labels], dtype=np.float32)
    assert ((normalised >= 0.5) == (probabilities >= thresholds)).all()
    # Installed, the worker's runtime takes the one-channel batch.
    entry = ModelRegistry(tmp_path / "models").install(built.onnx_path, card)
    output = load_classifier(entry).predict(batch)
    assert np.abs(output.probabilities - expected).max() < TOLERANCE


def test_torchxrayvision_without_label_list_uses_the_default_18(tmp_path: Path) -> None:
    written = write_xrv(tmp_path / "all.pt", legacy=True)
    converted = convert("xrv-densenet121", load_checkpoint(written.path), source="all.pt")
    assert converted.labels == XRV_DEFAULT_PATHOLOGIES
    assert converted.thresholds == (None,) * 18
    assert converted.in_channels == 1
    assert converted.state_dict["features.conv0.weight"].shape == (64, 1, 7, 7)
    codes = {label.name: label.code for label in labels_with_codes(converted.labels)}
    assert codes["Lung Opacity"].scheme_designator == "99RADLIGHT"
    assert codes["Atelectasis"].value == "46621007"


# --- refusals -----------------------------------------------------------------------------------


class _Evil:
    def __init__(self, command: str, how: str) -> None:
        self.command, self.how = command, how

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        if self.how == "system":
            return os.system, (self.command,)
        return eval, (f"__import__('os').system({self.command!r})",)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-format", "zip-format"])
@pytest.mark.parametrize(
    ("how", "refused"), [("system", "posix.system"), ("eval", "builtins.eval")]
)
def test_malicious_pickle_is_refused_and_nothing_runs(
    tmp_path: Path, legacy: bool, how: str, refused: str
) -> None:
    marker = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    written = write_jrzech(
        tmp_path / "checkpoint", legacy=legacy, extra={"LR": _Evil(f"touch {marker}", how)}
    )
    with pytest.raises(ModelError, match=rf"refused to load.*{refused}.*allow-list"):
        import_checkpoint("jrzech-chexnet", written.path, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_a_module_class_off_the_allow_list_is_refused(tmp_path: Path) -> None:
    class Custom(nn.Module):
        pass

    Custom.__module__, Custom.__qualname__ = "evil_pkg.models", "Custom"
    with fake_package("evil_pkg.models", {"Custom": Custom}):
        save({"model": Custom()}, tmp_path / "checkpoint", legacy=False)
    with pytest.raises(ModelError, match=r"evil_pkg\.models\.Custom"):
        load_checkpoint(tmp_path / "checkpoint")


def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still used
        torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(tmp_path / "scripted.pt"))
    with pytest.raises(ModelError, match="TorchScript"):
        load_checkpoint(tmp_path / "scripted.pt")


def test_unknown_and_missing_keys_are_listed(tmp_path: Path) -> None:
    written = write_arnoweng(tmp_path / "model.pth.tar", legacy=False)
    checkpoint = torch.load(written.path, weights_only=False)
    state = checkpoint["state_dict"]
    state["module.densenet121.features.extra_block.weight"] = torch.zeros(3)
    del state["module.densenet121.features.norm5.running_var"]
    torch.save(checkpoint, tmp_path / "edited.pth.tar")
    with pytest.raises(ModelError) as caught:
        import_checkpoint("arnoweng-chexnet", tmp_path / "edited.pth.tar", tmp_path / "out")
    message = str(caught.value)
    assert "1 unknown key(s): features.extra_block.weight" in message
    assert "1 missing key(s): features.norm5.running_var" in message


def test_wrong_shapes_are_listed(tmp_path: Path) -> None:
    written = write_arnoweng(tmp_path / "model.pth.tar", legacy=False)
    checkpoint = torch.load(written.path, weights_only=False)
    checkpoint["state_dict"]["module.densenet121.classifier.0.weight"] = torch.zeros(15, 1024)
    torch.save(checkpoint, tmp_path / "edited.pth.tar")
    with pytest.raises(
        ModelError, match=r"classifier\.weight \(15, 1024\) \(expected \(14, 1024\)"
    ):
        import_checkpoint("arnoweng-chexnet", tmp_path / "edited.pth.tar", tmp_path / "out")


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-format", "zip-format"])
def test_truncated_file_is_a_clear_error(tmp_path: Path, legacy: bool) -> None:
    written = write_jrzech(tmp_path / "checkpoint", legacy=legacy)
    data = written.path.read_bytes()
    truncated = tmp_path / "truncated"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        import_checkpoint("jrzech-chexnet", truncated, tmp_path / "out")


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", b"PNG"], ids=str)
def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(
    tmp_path: Path, nih_dir: Path, content: bytes
) -> None:
    path = tmp_path / "file"
    path.write_bytes((nih_dir / "00001369_000.png").read_bytes() if content == b"PNG" else content)
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        import_checkpoint("xrv-densenet121", path, tmp_path / "out")


def test_wrong_format_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    written = write_jrzech(tmp_path / "checkpoint", legacy=False)
    with pytest.raises(ModelError, match="not a torchxrayvision DenseNet file"):
        import_checkpoint("xrv-densenet121", written.path, tmp_path / "out")
    with pytest.raises(ModelError, match="not an arnoweng/CheXNet checkpoint"):
        import_checkpoint("arnoweng-chexnet", written.path, tmp_path / "out")
    with pytest.raises(ModelError, match="unknown checkpoint format"):
        import_checkpoint("keras", written.path, tmp_path / "out")
    with pytest.raises(ModelError, match="no such checkpoint file"):
        import_checkpoint("jrzech-chexnet", tmp_path / "absent", tmp_path / "out")


def test_a_plain_pickle_state_dict_loads_without_torch_load_tricks(tmp_path: Path) -> None:
    """The allow-list also reads what pickle (not torch.save) wrote, and still refuses code."""
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"epoch": 1, "values": OrderedDict(a=1)}))
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(path)  # torch.load wants its magic number: a clear error, no crash


# --- the CLI, end to end ------------------------------------------------------------------------


def test_cli_import_then_list(tmp_path: Path) -> None:
    written = write_xrv(tmp_path / "xrv.pt", targets=XRV_TARGETS, op_threshs=XRV_THRESHS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADLIGHT_")}
    env.update(RADLIGHT_DATA_DIR=str(tmp_path / "data"), RADLIGHT_LOG_JSON="false")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "radlight", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    done = run("models", "import", "xrv-densenet121", str(written.path), "--version", "1.0.0")
    assert done.returncode == 0, done.stderr
    assert "installed xrv-densenet121 1.0.0" in done.stdout
    listed = run("models", "list")
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    assert line.startswith("xrv-densenet121 1.0.0 ")
    assert line.endswith(" trained")
    card = ModelCard.load(tmp_path / "data" / "models" / "xrv-densenet121" / "1.0.0" / "card.yaml")
    assert card.provenance.source == "xrv-densenet121: xrv.pt"

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    refused = run("models", "import", "jrzech-chexnet", str(bad))
    assert refused.returncode == 1
    assert "not a readable PyTorch checkpoint" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_cli_format_choices_match_the_importers() -> None:
    from radlight.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["models", "import", "jrzech-chexnet", "x"])
    assert args.format == "jrzech-chexnet"
    for fmt in FORMATS:
        assert parser.parse_args(["models", "import", fmt, "x"]).format == fmt
    with pytest.raises(SystemExit):
        parser.parse_args(["models", "import", "keras", "x"])


# --- the xrv-gray preprocessing kind ------------------------------------------------------------


def test_xrv_gray_preprocessing_is_xrv_normalise_on_the_chexnet_geometry(
    nih_images: list[npt.NDArray[np.uint8]],
) -> None:
    from models.card import CHEXNET_PREPROCESSING, XRV_GRAY_PREPROCESSING, Preprocessing
    from models.preprocess import prepare_image

    for image in nih_images:
        gray = prepare_image(image, XRV_GRAY_PREPROCESSING)
        rgb = prepare_image(image, CHEXNET_PREPROCESSING)
        assert gray.tensor.shape == (1, 224, 224)
        assert gray.geometry == rgb.geometry
        # Undo ImageNet normalisation to get the resized 0..1 plane, then xrv's normalize(img, 255).
        unit = rgb.tensor[0] * np.float32(0.229) + np.float32(0.485)
        assert np.abs(gray.tensor[0] - (unit * 2048 - 1024)).max() < 1e-3
    with pytest.raises(ValueError, match="does not allow"):
        Preprocessing.model_validate(
            {**XRV_GRAY_PREPROCESSING.model_dump(), "channels": "gray_to_rgb"}
        )
    with pytest.raises(ValueError, match="does not allow"):
        Preprocessing.model_validate({**CHEXNET_PREPROCESSING.model_dump(), "channels": "gray"})
