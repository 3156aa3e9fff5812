"""Fixtures for the models tests: real NIH images, one exported DenseNet-121, the tiny model.

torch is imported inside the DenseNet fixture only, so the tests that use the tiny model show
that the runtime path works without it.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from models.export import BuiltModel, build_tiny_classifier

if TYPE_CHECKING:
    from models.densenet import CamClassifier

# Two mode-L images and one of the three RGBA ones (R=G=B), so grayscale conversion is exercised.
SAMPLE_IMAGES = ("00001369_000.png", "00013122_000.png", "00026911_000.png")


def read_gray(path: Path) -> npt.NDArray[np.uint8]:
    """A NIH PNG as a 2-D uint8 display image (RGBA files hold gray in R=G=B)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


@pytest.fixture(scope="session")
def nih_dir(assets_dir: Path) -> Path:
    return assets_dir / "nih_cxr14" / "images"


@pytest.fixture(scope="session")
def nih_images(nih_dir: Path) -> list[npt.NDArray[np.uint8]]:
    return [read_gray(nih_dir / name) for name in SAMPLE_IMAGES]


def randomise_statistics(model: "CamClassifier", seed: int) -> None:
    """Give every BatchNorm and the classifier bias non-trivial values, as a trained net has.

    torchvision's init leaves BN as identity (mean 0, var 1, weight 1, bias 0) and the classifier
    bias at 0, which would let an exporter that dropped or mixed them up pass unnoticed.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                count = module.num_features
                assert module.running_mean is not None
                assert module.running_var is not None
                module.weight.copy_(0.5 + torch.rand(count, generator=generator))
                module.bias.copy_(0.1 * torch.randn(count, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(count, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(count, generator=generator))
        bias = model.classifier.bias
        bias.copy_(0.5 * torch.randn(bias.shape[0], generator=generator))


@dataclass(frozen=True)
class ExportedChexnet:
    model: "CamClassifier"
    onnx_path: Path
    sha256: str


@pytest.fixture(scope="session")
def exported_chexnet(tmp_path_factory: pytest.TempPathFactory) -> ExportedChexnet:
    """DenseNet-121 with seeded random weights and statistics, exported once per session."""
    from models.densenet import chexnet
    from models.export import export_classifier_onnx

    model = chexnet(seed=7)
    randomise_statistics(model, seed=7)
    path = tmp_path_factory.mktemp("chexnet") / "model.onnx"
    sha256 = export_classifier_onnx(model, path)
    return ExportedChexnet(model=model, onnx_path=path, sha256=sha256)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    return build_tiny_classifier(tmp_path_factory.mktemp("tiny"))
