"""Real models in the app's registry for the configuration tests: the tiny classifier (no torch),
built once per session and installed into each test's registry."""

import pytest

from models.export import BuiltModel, build_tiny_classifier
from models.registry import ModelRegistry
from radlight.settings import Settings

TINY = "tiny-test-classifier"
SEEDS = (0, 1)  # versions 0.0.0-seed0 and 0.0.0-seed1 (the latest)


@pytest.fixture(scope="session")
def tiny_builds(tmp_path_factory: pytest.TempPathFactory) -> list[BuiltModel]:
    work = tmp_path_factory.mktemp("tiny-models")
    return [build_tiny_classifier(work / f"seed{seed}", seed=seed) for seed in SEEDS]


def install(settings: Settings, builds: list[BuiltModel]) -> None:
    registry = ModelRegistry(settings.models_dir)
    for built in builds:
        registry.install(built.onnx_path, built.card)
