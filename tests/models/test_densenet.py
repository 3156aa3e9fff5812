"""DenseNet-121 keeps torchvision's state_dict layout, so public checkpoints load key for key."""

import torch

from models.densenet import CamClassifier, DenseNet121, chexnet

BN_ENTRIES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_densenet121_keys() -> list[str]:
    """torchvision ``densenet121().state_dict()`` keys, built from the architecture's structure."""
    keys = ["features.conv0.weight", *(f"features.norm0.{entry}" for entry in BN_ENTRIES)]
    for block, num_layers in enumerate((6, 12, 24, 16), start=1):
        for layer in range(1, num_layers + 1):
            prefix = f"features.denseblock{block}.denselayer{layer}"
            keys += [f"{prefix}.norm1.{entry}" for entry in BN_ENTRIES]
            keys.append(f"{prefix}.conv1.weight")
            keys += [f"{prefix}.norm2.{entry}" for entry in BN_ENTRIES]
            keys.append(f"{prefix}.conv2.weight")
        if block < 4:
            keys += [f"features.transition{block}.norm.{entry}" for entry in BN_ENTRIES]
            keys.append(f"features.transition{block}.conv.weight")
    keys += [f"features.norm5.{entry}" for entry in BN_ENTRIES]
    keys += ["classifier.weight", "classifier.bias"]
    return keys


def test_state_dict_keys_are_torchvision_keys() -> None:
    state = DenseNet121().state_dict()
    expected = torchvision_densenet121_keys()
    assert len(expected) == 727
    assert list(state) == expected


def test_state_dict_shapes_and_parameter_count() -> None:
    state = DenseNet121().state_dict()
    assert state["features.conv0.weight"].shape == (64, 3, 7, 7)
    assert state["features.denseblock1.denselayer1.norm1.running_var"].shape == (64,)
    assert state["features.denseblock1.denselayer1.conv1.weight"].shape == (128, 64, 1, 1)
    assert state["features.denseblock1.denselayer1.conv2.weight"].shape == (32, 128, 3, 3)
    assert state["features.denseblock3.denselayer24.norm1.weight"].shape == (256 + 23 * 32,)
    assert state["features.transition1.conv.weight"].shape == (128, 256, 1, 1)
    assert state["features.transition3.conv.weight"].shape == (512, 1024, 1, 1)
    assert state["features.norm5.weight"].shape == (1024,)
    assert state["classifier.weight"].shape == (14, 1024)
    # torchvision's densenet121 has 7,978,856 parameters with its 1000-class head.
    parameters = sum(p.numel() for p in DenseNet121().parameters())
    assert parameters == 7_978_856 - (1024 * 1000 + 1000) + (1024 * 14 + 14)


def test_cam_wrapper_shares_keys_and_weights() -> None:
    network = DenseNet121(generator=torch.Generator().manual_seed(3))
    wrapper = CamClassifier(network)
    assert list(wrapper.state_dict()) == list(network.state_dict())
    loaded = CamClassifier(DenseNet121())
    loaded.load_state_dict(network.state_dict(), strict=True)
    assert torch.equal(loaded.classifier.weight, network.classifier.weight)


def test_forward_returns_probabilities_and_pooled_feature_map() -> None:
    network = DenseNet121(generator=torch.Generator().manual_seed(1)).eval()
    model = CamClassifier(network).eval()
    image = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probabilities, features = model(image)
        logits = network(image)
    assert probabilities.shape == (2, 14)
    assert features.shape == (2, 1024, 7, 7)
    assert bool((features >= 0).all())  # after norm5 + ReLU
    pooled = features.mean(dim=(2, 3))
    recomputed = torch.sigmoid(pooled @ model.classifier.weight.T + model.classifier.bias)
    torch.testing.assert_close(probabilities, recomputed, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.sigmoid(logits), probabilities, atol=1e-6, rtol=1e-5)


def test_seed_makes_weights_repeatable() -> None:
    first, second, other = chexnet(seed=5), chexnet(seed=5), chexnet(seed=6)
    key = "features.conv0.weight"
    assert torch.equal(first.state_dict()[key], second.state_dict()[key])
    assert not torch.equal(first.state_dict()[key], other.state_dict()[key])
    assert not first.training
