"""Installed models on disk: ``<models_dir>/<name>/<version>/{model.onnx, card.yaml}``.

A version, once installed, is immutable: installing it again with the same file is a no-op, with
a different file an error. :meth:`ModelRegistry.get` returns only a model whose file still has
the sha256 its card promises (ModelIntegrityError otherwise), so a worker never runs a file that
changed under it; the hash is cached per file identity, so this costs a ``stat`` per call.
"""

import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from models.card import CARD_FILE_NAME, HeatmapOutputNames, ModelCard, validate_identifier
from models.checksum import cached_sha256_file, file_identity, sha256_bytes, sha256_file
from models.contract import parse_model, read_contract, read_heatmap_contract
from models.preprocess import INPUT_LAYOUTS
from radlight.errors import ModelError, ModelIntegrityError

logger = logging.getLogger(__name__)

_RELEASE = re.compile(r"^(\d+(?:\.\d+)*)(.*)$")
_MAX_CARDS = 64
_cards: dict[tuple[str, int, int, int, int], ModelCard] = {}
_cards_lock = threading.Lock()


def _load_card(path: Path) -> ModelCard:
    """The card at ``path``, parsed once per file identity: a worker reads it for every job, and
    parsing and validating the YAML cost more than the rest of choosing the model. Cards are
    replaced by rename (:meth:`ModelCard.save`), which changes the identity."""
    key = file_identity(path)
    with _cards_lock:
        known = _cards.get(key)
    if known is not None:
        return known
    card = ModelCard.load(path)
    with _cards_lock:
        if len(_cards) >= _MAX_CARDS:
            _cards.clear()
        _cards[key] = card
    return card


@dataclass(frozen=True)
class PrecisionVariant:
    """Another file of the same model version that computes in another precision (an fp16
    copy made and checked against the card's file: :mod:`models.precision`)."""

    precision: str
    file_name: str
    sha256: str


@dataclass(frozen=True)
class ModelEntry:
    """One installed model version: its directory and its card, and the precision variant to
    run instead of the card's file, if one was chosen (``models.precision.with_precision``)."""

    directory: Path
    card: ModelCard
    variant: PrecisionVariant | None = None

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def precision(self) -> str:
        """What the file that runs computes in: ``fp32`` (the card's file) or the variant's."""
        return "fp32" if self.variant is None else self.variant.precision

    @property
    def sha256(self) -> str:
        """The sha256 of the file that runs: the card's, or the variant's."""
        return self.card.sha256 if self.variant is None else self.variant.sha256

    @property
    def onnx_path(self) -> Path:
        """The file that runs: the card's, or the variant's beside it."""
        return self.directory / (
            self.card.onnx_file if self.variant is None else self.variant.file_name
        )

    @property
    def card_path(self) -> Path:
        return self.directory / CARD_FILE_NAME


def version_key(version: str) -> tuple[tuple[int, ...], int, tuple[str | int, ...], str]:
    """Sort key: numeric release first (1.10 > 1.9), a release above its pre-releases
    (1.0.0 > 1.0.0-rc1), then digits in the suffix compared as numbers."""
    match = _RELEASE.match(version)
    release, suffix = (match.group(1), match.group(2)) if match else ("", version)
    numbers = tuple(int(part) for part in release.split(".")) if release else ()
    suffix = suffix.lstrip("-_.")
    natural = tuple(
        int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", suffix))
    )
    return numbers, 0 if suffix else 1, natural, version


class ModelRegistry:
    """Install, find and verify model versions under one directory."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)

    def install(self, onnx_path: Path, card: ModelCard) -> ModelEntry:
        """Copy ``onnx_path`` and write ``card`` as ``<name>/<version>``; return the entry.

        The file must have the card's sha256 (ModelIntegrityError) and follow the card's
        interface (ModelError). The version appears complete or not at all (staged, renamed).
        """
        try:
            data = Path(onnx_path).read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read model file {onnx_path}: {exc}") from exc
        check_card_matches_model(card, data, source=str(onnx_path))
        target = self._version_dir(card.name, card.version)
        if target.exists():
            return self._reinstall(target, card)

        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".install-{card.version}-", dir=parent))
        try:
            staged = staging / card.onnx_file
            with staged.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if sha256_file(staged) != card.sha256:
                raise ModelIntegrityError(f"copy of {onnx_path} does not match its sha256")
            card.save(staging / CARD_FILE_NAME)
            try:
                staging.rename(target)
            except OSError:
                if target.exists():  # another process installed it first
                    return self._reinstall(target, card)
                raise
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        logger.info("installed model %s %s (sha256 %s)", card.name, card.version, card.sha256)
        return ModelEntry(directory=target, card=card)

    def get(self, name: str, version: str | None = None) -> ModelEntry:
        """The named version, or the latest when ``version`` is None, checked against its card."""
        validate_identifier(name, "model name")
        if version is None:
            versions = self.versions(name)
            if not versions:
                raise ModelError(f"no model named {name!r} is installed")
            version = versions[-1]
        entry = self._read_entry(name, version)
        self.verify(entry)
        return entry

    def verify(self, entry: ModelEntry) -> None:
        """Raise ModelIntegrityError unless the entry's file has its card's sha256."""
        try:
            actual = cached_sha256_file(entry.onnx_path)
        except OSError as exc:
            raise ModelError(f"model file {entry.onnx_path} is unreadable: {exc}") from exc
        if actual != entry.sha256:
            raise ModelIntegrityError(
                f"model {entry.name} {entry.version}: {entry.onnx_path} has sha256 {actual}, "
                f"its card promises {entry.sha256}; refusing to use it"
            )

    def versions(self, name: str) -> list[str]:
        """Installed versions of ``name``, oldest first (see :func:`version_key`)."""
        validate_identifier(name, "model name")
        directory = self.models_dir / name
        if not directory.is_dir():
            return []
        found = [
            child.name
            for child in directory.iterdir()
            if _is_identifier(child.name) and (child / CARD_FILE_NAME).is_file()
        ]
        return sorted(found, key=version_key)

    def _version_dir(self, name: str, version: str) -> Path:
        validate_identifier(name, "model name")
        validate_identifier(version, "model version")
        return self.models_dir / name / version

    def _read_entry(self, name: str, version: str) -> ModelEntry:
        directory = self._version_dir(name, version)
        card_path = directory / CARD_FILE_NAME
        if not card_path.is_file():
            raise ModelError(f"model {name} {version} is not installed")
        try:
            card = _load_card(card_path)
        except OSError as exc:
            raise ModelError(f"{card_path}: cannot read model card: {exc}") from exc
        if (card.name, card.version) != (name, version):
            raise ModelError(
                f"{card_path} describes {card.name} {card.version}, not {name} {version}"
            )
        return ModelEntry(directory=directory, card=card)

    def _reinstall(self, target: Path, card: ModelCard) -> ModelEntry:
        existing = self._read_entry(card.name, card.version)
        if existing.card != card:
            raise ModelError(
                f"model {card.name} {card.version} is already installed with another file or "
                "card; installed versions are immutable, use a new version"
            )
        self.verify(existing)
        return existing

    def list(self) -> list[ModelEntry]:
        """Every installed version with a readable card, by name then version.

        Files are not hashed here (that is :meth:`get`'s job); a version whose card cannot be
        read is logged and left out.
        """
        entries: list[ModelEntry] = []
        if not self.models_dir.is_dir():
            return entries
        for name_dir in sorted(self.models_dir.iterdir()):
            if not (name_dir.is_dir() and _is_identifier(name_dir.name)):
                continue
            for version in self.versions(name_dir.name):
                try:
                    entries.append(self._read_entry(name_dir.name, version))
                except ModelError as exc:
                    logger.warning("skipping model %s %s: %s", name_dir.name, version, exc)
        return entries


def check_card_matches_model(card: ModelCard, data: bytes, *, source: str) -> None:
    """The bytes must be the card's file (sha256) and follow the card's interface and labels."""
    actual = sha256_bytes(data)
    if actual != card.sha256:
        raise ModelIntegrityError(
            f"{source} has sha256 {actual}, its card {card.name} {card.version} says {card.sha256}"
        )
    if isinstance(card.outputs, HeatmapOutputNames):
        _check_heatmap_model(card, card.outputs, data, source=source)
        return
    contract = read_contract(
        parse_model(data, source=source),
        input_name=card.outputs.input,
        probabilities_name=card.outputs.probabilities,
        features_name=card.outputs.features,
    )
    problems = []
    if (contract.cam_weight_name, contract.cam_bias_name) != (
        card.outputs.cam_weight,
        card.outputs.cam_bias,
    ):
        problems.append(
            f"CAM initializers are {contract.cam_weight_name}/{contract.cam_bias_name}, "
            f"card says {card.outputs.cam_weight}/{card.outputs.cam_bias}"
        )
    if contract.num_labels != len(card.labels):
        problems.append(f"model has {contract.num_labels} outputs, card {len(card.labels)} labels")
    if contract.input_size != card.preprocessing.input_size:
        problems.append(
            f"model input is {contract.input_size}, card says {card.preprocessing.input_size}"
        )
    wanted_channels = 1 if card.preprocessing.channels == "gray" else 3
    if contract.input_channels != wanted_channels:
        problems.append(
            f"model input has {contract.input_channels} channels, the card's preprocessing "
            f"gives {wanted_channels}"
        )
    if problems:
        raise ModelError(f"{source} does not match its card: " + "; ".join(problems))


def _check_heatmap_model(
    card: ModelCard, names: HeatmapOutputNames, data: bytes, *, source: str
) -> None:
    """A ``probabilities-heatmap/1`` file: tensor names, input size and layout, label columns."""
    contract = read_heatmap_contract(
        parse_model(data, source=source),
        input_name=names.input,
        probabilities_name=names.probabilities,
        heatmap_name=names.heatmap,
    )
    problems = []
    if contract.input_size != card.preprocessing.input_size:
        problems.append(
            f"model input is {contract.input_size}, card says {card.preprocessing.input_size}"
        )
    layout = INPUT_LAYOUTS.get(card.preprocessing.kind)
    if layout is not None and contract.layout != layout:
        problems.append(f"model input is {contract.layout}, card's preprocessing gives {layout}")
    if contract.num_columns is not None and max(names.label_columns) >= contract.num_columns:
        problems.append(
            f"card reads probability columns {names.label_columns}, model has {contract.num_columns}"
        )
    if problems:
        raise ModelError(f"{source} does not match its card: " + "; ".join(problems))


def _is_identifier(value: str) -> bool:
    try:
        validate_identifier(value, "path component")
    except ValueError:
        return False
    return True
