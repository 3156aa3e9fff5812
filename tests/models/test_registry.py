"""The registry installs immutable versions, finds the latest, and refuses altered files."""

import logging
import os
import shutil
from pathlib import Path

import pytest

from models import checksum
from models.card import CARD_FILE_NAME, ModelCard
from models.export import BuiltModel, build_tiny_classifier
from models.registry import ModelRegistry, version_key
from radlight.errors import ModelError, ModelIntegrityError


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def _versioned(card: ModelCard, version: str) -> ModelCard:
    return ModelCard.model_validate({**card.model_dump(), "version": version})


def test_install_lays_out_files_and_get_verifies(
    registry: ModelRegistry, tiny_model: BuiltModel
) -> None:
    entry = registry.install(tiny_model.onnx_path, tiny_model.card)
    directory = registry.models_dir / "tiny-test-classifier" / "0.0.0-seed0"
    assert entry.directory == directory
    assert sorted(p.name for p in directory.iterdir()) == [CARD_FILE_NAME, "model.onnx"]
    assert entry.onnx_path.read_bytes() == tiny_model.onnx_path.read_bytes()
    assert ModelCard.load(entry.card_path) == tiny_model.card
    assert registry.get("tiny-test-classifier", "0.0.0-seed0") == entry
    assert registry.get("tiny-test-classifier") == entry
    assert registry.list() == [entry]
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]


def test_latest_uses_version_order(registry: ModelRegistry, tiny_model: BuiltModel) -> None:
    for version in ("0.9.0", "0.10.0-rc1", "0.10.0", "0.2"):
        registry.install(tiny_model.onnx_path, _versioned(tiny_model.card, version))
    assert registry.versions("tiny-test-classifier") == ["0.2", "0.9.0", "0.10.0-rc1", "0.10.0"]
    assert registry.get("tiny-test-classifier").version == "0.10.0"
    assert [e.version for e in registry.list()] == ["0.2", "0.9.0", "0.10.0-rc1", "0.10.0"]


def test_version_key_orders_naturally() -> None:
    versions = ["1.10", "1.9.1", "1.0.0", "1.0.0-rc2", "1.0.0-rc10", "2", "beta", "0.0.0-seed0"]
    assert sorted(versions, key=version_key) == [
        "beta",
        "0.0.0-seed0",
        "1.0.0-rc2",
        "1.0.0-rc10",
        "1.0.0",
        "1.9.1",
        "1.10",
        "2",
    ]


@pytest.mark.parametrize(
    ("name", "version"),
    [("..", None), ("../models", None), ("tiny/x", None), ("tiny", "../../etc"), ("tiny", "..")],
)
def test_path_traversal_is_refused(registry: ModelRegistry, name: str, version: str | None) -> None:
    with pytest.raises(ValueError, match="invalid"):
        registry.get(name, version)


def test_unknown_model_is_a_model_error(registry: ModelRegistry, tiny_model: BuiltModel) -> None:
    with pytest.raises(ModelError, match="no model named"):
        registry.get("absent")
    registry.install(tiny_model.onnx_path, tiny_model.card)
    with pytest.raises(ModelError, match="not installed"):
        registry.get("tiny-test-classifier", "9.9.9")


def test_altered_file_raises_integrity_error(
    registry: ModelRegistry, tiny_model: BuiltModel
) -> None:
    entry = registry.install(tiny_model.onnx_path, tiny_model.card)
    registry.get(entry.name)  # verified and cached while unchanged
    with entry.onnx_path.open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelIntegrityError, match="refusing"):
        registry.get(entry.name)


def test_install_refuses_a_file_that_is_not_the_cards(
    registry: ModelRegistry, tiny_model: BuiltModel
) -> None:
    with pytest.raises(ModelIntegrityError):
        registry.install(tiny_model.onnx_path, tiny_model.card.with_sha256("0" * 64))
    assert registry.list() == []


def test_install_refuses_a_card_that_does_not_fit_the_model(
    registry: ModelRegistry, tiny_model: BuiltModel
) -> None:
    data = tiny_model.card.model_dump()
    data["labels"] = data["labels"][:13]
    with pytest.raises(ModelError, match="14 outputs, card 13 labels"):
        registry.install(tiny_model.onnx_path, ModelCard.model_validate(data))


def test_install_refuses_a_non_onnx_file(
    registry: ModelRegistry, tiny_model: BuiltModel, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model\xff\x00")
    with pytest.raises(ModelError, match="not an ONNX model"):
        registry.install(junk, tiny_model.card.with_sha256(checksum.sha256_file(junk)))


def test_versions_are_immutable(
    registry: ModelRegistry, tiny_model: BuiltModel, tmp_path: Path
) -> None:
    first = registry.install(tiny_model.onnx_path, tiny_model.card)
    assert registry.install(tiny_model.onnx_path, tiny_model.card) == first  # idempotent
    other = build_tiny_classifier(tmp_path / "other", seed=1)
    with pytest.raises(ModelError, match="immutable"):
        registry.install(other.onnx_path, _versioned(other.card, "0.0.0-seed0"))
    assert registry.get(first.name).sha256 == tiny_model.card.sha256


def test_malformed_card_is_a_model_error_and_skipped_by_list(
    registry: ModelRegistry, tiny_model: BuiltModel, caplog: pytest.LogCaptureFixture
) -> None:
    good = registry.install(tiny_model.onnx_path, tiny_model.card)
    bad = registry.install(tiny_model.onnx_path, _versioned(tiny_model.card, "2.0"))
    bad.card_path.write_text("name: [broken", encoding="utf-8")
    with pytest.raises(ModelError, match="not valid YAML"):
        registry.get(bad.name, "2.0")
    with pytest.raises(ModelError, match="not valid YAML"):
        registry.get(bad.name)  # the latest is broken: say so, do not fall back silently
    with caplog.at_level(logging.WARNING, logger="models.registry"):
        assert registry.list() == [good]
    assert "skipping model tiny-test-classifier 2.0" in caplog.text


def test_card_must_match_its_directory(registry: ModelRegistry, tiny_model: BuiltModel) -> None:
    entry = registry.install(tiny_model.onnx_path, tiny_model.card)
    moved = entry.directory.parent / "5.0"
    shutil.copytree(entry.directory, moved)
    with pytest.raises(ModelError, match="describes"):
        registry.get(entry.name, "5.0")


def test_sha256_is_cached_per_file_identity(
    registry: ModelRegistry, tiny_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = registry.install(tiny_model.onnx_path, tiny_model.card)
    checksum.clear_checksum_cache()
    calls: list[Path] = []
    real = checksum.sha256_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(checksum, "sha256_file", counting)
    for _ in range(3):
        registry.get(entry.name)
    assert len(calls) == 1
    stat = entry.onnx_path.stat()
    os.utime(entry.onnx_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # hash again
    registry.get(entry.name)
    assert len(calls) == 2


def test_card_is_parsed_once_per_file_identity(
    registry: ModelRegistry, tiny_model: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = registry.install(tiny_model.onnx_path, tiny_model.card)
    loads: list[Path] = []
    real = ModelCard.load

    def counting(path: Path) -> ModelCard:
        loads.append(path)
        return real(path)

    monkeypatch.setattr(ModelCard, "load", counting)
    first = registry.get(entry.name)
    assert registry.get(entry.name) == first
    cached = len(loads)
    assert cached <= 1  # parsed at most once (not at all if an earlier test cached it)
    changed = entry.card.model_copy(update={"intended_use": "edited in place"})
    changed.save(entry.card_path)  # replaced by rename: a new identity
    assert registry.get(entry.name).card.intended_use == "edited in place"
    assert len(loads) == cached + 1
