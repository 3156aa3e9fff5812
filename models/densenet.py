"""DenseNet-121 in PyTorch with torchvision's exact state_dict keys, and the CheXNet CAM wrapper.

Written by hand so that exporting needs only torch (torchvision is not required), while public
checkpoints (arnoweng/CheXNet, jrzech/reproduce-chexnet, torchxrayvision) still map key for key.
This module imports torch at the top: it is export-time code (the ``export`` extra), never on the
worker's runtime path, which needs onnxruntime only.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

GROWTH_RATE = 32
BLOCK_CONFIG: tuple[int, ...] = (6, 12, 24, 16)
BN_SIZE = 4
NUM_INIT_FEATURES = 64
NUM_FEATURES = 1024
NUM_CHEXNET_CLASSES = 14


class _DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 over the concatenation of all earlier feature maps."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(
            num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False
        )
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(
            bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False
        )

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        concatenated = torch.cat(inputs, 1)
        bottleneck = self.conv1(self.relu1(self.norm1(concatenated)))
        out: torch.Tensor = self.conv2(self.relu2(self.norm2(bottleneck)))
        return out


class _DenseBlock(nn.ModuleDict):
    """``denselayer1..n``; each layer sees every earlier output, the block returns them all."""

    def __init__(
        self, num_layers: int, num_input_features: int, growth_rate: int, bn_size: int
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: torch.Tensor) -> torch.Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-Conv1x1-AvgPool between dense blocks: halves channels and resolution."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(
            num_input_features, num_output_features, kernel_size=1, stride=1, bias=False
        )
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet121(nn.Module):
    """torchvision's ``densenet121`` layout (growth 32, blocks 6/12/24/16, bn_size 4, 64 stem).

    ``forward`` returns logits like torchvision's; use :class:`CamClassifier` for the CheXNet
    interface. ``in_channels=1`` gives torchxrayvision's variant (one gray plane in), with the
    same state_dict keys. Weights are initialised as torchvision does, from ``generator`` when given, so a
    seed gives the same untrained network on every machine.
    """

    def __init__(
        self,
        num_classes: int = NUM_CHEXNET_CLASSES,
        *,
        in_channels: int = 3,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError("num_classes and in_channels must be >= 1")
        self.features = nn.Sequential(
            OrderedDict(
                [
                    (
                        "conv0",
                        nn.Conv2d(
                            in_channels, NUM_INIT_FEATURES, 7, stride=2, padding=3, bias=False
                        ),
                    ),
                    ("norm0", nn.BatchNorm2d(NUM_INIT_FEATURES)),
                    ("relu0", nn.ReLU()),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ]
            )
        )
        num_features = NUM_INIT_FEATURES
        for i, num_layers in enumerate(BLOCK_CONFIG):
            block = _DenseBlock(num_layers, num_features, GROWTH_RATE, BN_SIZE)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * GROWTH_RATE
            if i != len(BLOCK_CONFIG) - 1:
                transition = _Transition(num_features, num_features // 2)
                self.features.add_module(f"transition{i + 1}", transition)
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)
        self._init_weights(generator)

    def _init_weights(self, generator: torch.Generator | None) -> None:
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, generator=generator)
                elif isinstance(module, nn.BatchNorm2d):
                    nn.init.constant_(module.weight, 1.0)
                    nn.init.constant_(module.bias, 0.0)
                elif isinstance(module, nn.Linear):
                    nn.init.kaiming_uniform_(module.weight, a=5**0.5, generator=generator)
                    nn.init.constant_(module.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = F.relu(self.features(x))
        pooled = torch.flatten(F.adaptive_avg_pool2d(features, (1, 1)), 1)
        logits: torch.Tensor = self.classifier(pooled)
        return logits


class CamClassifier(nn.Module):
    """CheXNet interface: ``(sigmoid probabilities [N, L], final feature map [N, C, h, w])``.

    The feature map is ReLU(norm5(...)), exactly what global average pooling reads, so the class
    activation map of finding ``l`` is ``classifier.weight[l] @ features`` (one matmul). Shares the
    network's ``features`` and ``classifier`` modules, so its state_dict keys stay torchvision's.
    """

    def __init__(self, network: DenseNet121) -> None:
        super().__init__()
        self.features = network.features
        self.classifier = network.classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = F.relu(self.features(x))
        pooled = torch.flatten(F.adaptive_avg_pool2d(features, (1, 1)), 1)
        probabilities = torch.sigmoid(self.classifier(pooled))
        return probabilities, features


def chexnet(*, seed: int | None = None) -> CamClassifier:
    """Untrained CheXNet (DenseNet-121, 14 outputs) in eval mode; ``seed`` makes it repeatable."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    model = CamClassifier(DenseNet121(NUM_CHEXNET_CLASSES, generator=generator))
    return model.eval()
