"""Model cards: what a model file is, what it expects, what it outputs, and where it came from.

A card sits beside its ONNX file as ``card.yaml``. It is validated strictly (no type coercion, no
unknown keys, every field stated), because a worker reads it to decide how to feed the model and
whether to trust its file: a quoted ``version: "1.0"`` is a string, an unquoted ``1.0`` is an error.
"""

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.contract import (
    CAM_BIAS_INITIALIZER,
    CAM_WEIGHT_INITIALIZER,
    FEATURES_NAME,
    INPUT_NAME,
    PROBABILITIES_NAME,
)
from models.labels import finding_code
from radlight.errors import ModelError

IDENTIFIER_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
SHA256_PATTERN = r"^[0-9a-f]{64}$"
TASK_CHEST_XRAY_CLASSIFICATION: Final = "chest-xray-classification"
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CARD_FILE_NAME = "card.yaml"
ONNX_FILE_NAME = "model.onnx"


def validate_identifier(value: str, what: str) -> str:
    """Return ``value`` if it is safe as one path component (letters, digits, ``._-``), else raise.

    Names and versions become directory names, so ``..``, a leading dot and separators are refused.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not IDENTIFIER_PATTERN.fullmatch(value) or value.startswith(".") or ".." in value:
        raise ValueError(
            f"invalid {what} {value!r}: use 1-64 of [A-Za-z0-9._-], not starting with '.', no '..'"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")


class CodedConcept(_Strict):
    """A DICOM coded concept (CodeValue, CodingSchemeDesignator, CodeMeaning)."""

    value: Annotated[str, Field(min_length=1, max_length=64)]
    scheme_designator: Annotated[str, Field(min_length=1, max_length=16)]
    meaning: Annotated[str, Field(min_length=1, max_length=64)]


class LabelSpec(_Strict):
    """One output of the model, in output order, with its code and optional operating threshold."""

    name: Annotated[str, Field(min_length=1)]
    code: CodedConcept
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] | None = None


class InputContract(_Strict):
    """Which images the model was made for; the pipeline refuses others with a reason."""

    modalities: Annotated[tuple[str, ...], Field(min_length=1)]
    view_positions: Annotated[tuple[str, ...], Field(min_length=1)]
    body_part: Annotated[str, Field(min_length=1)]
    photometric_interpretation: Literal["MONOCHROME2"]
    # Patient age the model was made for, in completed years, both ends included (None: any age).
    # An age-restricted model does not analyse images whose patient age is unknown.
    age_range_years: (
        tuple[Annotated[int, Field(ge=0, le=150)], Annotated[int, Field(ge=0, le=150)]] | None
    ) = None
    # Who the model is for, in a few words, quoted in "not analysed" reasons ("pediatric demo").
    population: Annotated[str, Field(min_length=1, max_length=80)] | None = None

    @model_validator(mode="after")
    def _age_range_ordered(self) -> "InputContract":
        if self.age_range_years is not None and self.age_range_years[0] > self.age_range_years[1]:
            raise ValueError("age_range_years must be (youngest, oldest)")
        return self


class Preprocessing(_Strict):
    """How a windowed grayscale display image becomes the input tensor (see models.preprocess).

    ``rescale: uint8_to_unit`` means display values 0..255 are divided by 255, as torchvision's
    ``ToTensor`` does; ``channels: gray_to_rgb`` means the gray plane is copied into R, G and B.

    ``kind`` names the whole recipe (default ``chexnet``, the fields above, NCHW). Kind
    ``keras-xception-nhwc`` is Keras' ``load_img`` + ``xception.preprocess_input``: the whole image
    (no aspect keep, no crop) resized to ``input_size`` square with NEAREST, ``x / 127.5 - 1``
    (``rescale: uint8_to_symmetric``, mean 0, std 1), gray copied to RGB, laid out NHWC.
    Kind ``xrv-gray`` is torchxrayvision's: the CheXNet geometry, then one plane ``[1, S, S]``
    (``channels: gray``) with mean 0.5 and std 1/2048, so 0..255 maps onto [-1024, 1024] as
    ``xrv.datasets.normalize(img, 255)`` does (only the first mean/std value is used).
    """

    kind: Literal["chexnet", "keras-xception-nhwc", "xrv-gray"] = "chexnet"
    input_size: Annotated[int, Field(gt=0, le=4096)]
    resize_short_side: Annotated[int, Field(gt=0, le=4096)]
    crop: Literal["center", "none"]
    interpolation: Literal["bilinear", "nearest"]
    rescale: Literal["uint8_to_unit", "uint8_to_symmetric"]
    channels: Literal["gray_to_rgb", "gray"]
    mean: tuple[float, float, float]
    std: tuple[
        Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]
    ]

    @model_validator(mode="after")
    def _crop_fits(self) -> "Preprocessing":
        if self.resize_short_side < self.input_size:
            raise ValueError("resize_short_side must be >= input_size (the crop must fit)")
        return self

    @model_validator(mode="after")
    def _fields_match_kind(self) -> "Preprocessing":
        expected: dict[str, object] = {}
        if self.kind == "chexnet":
            expected = {"crop": "center", "interpolation": "bilinear", "rescale": "uint8_to_unit"}
        elif self.kind == "xrv-gray":
            expected = {
                "crop": "center",
                "interpolation": "bilinear",
                "rescale": "uint8_to_unit",
                "channels": "gray",
            }
        elif self.kind == "keras-xception-nhwc":
            expected = {
                "crop": "none",
                "interpolation": "nearest",
                "rescale": "uint8_to_symmetric",
                "resize_short_side": self.input_size,
                "mean": (0.0, 0.0, 0.0),
                "std": (1.0, 1.0, 1.0),
            }
        if self.kind != "xrv-gray":
            expected["channels"] = "gray_to_rgb"
        wrong = [f"{k}={getattr(self, k)!r}" for k, v in expected.items() if getattr(self, k) != v]
        if wrong:
            raise ValueError(f"preprocessing kind {self.kind} does not allow {', '.join(wrong)}")
        return self


class OutputNames(_Strict):
    """Tensor names of the ONNX graph and the names of its CAM initializers."""

    input: Annotated[str, Field(min_length=1)]
    probabilities: Annotated[str, Field(min_length=1)]
    features: Annotated[str, Field(min_length=1)]
    cam_weight: Annotated[str, Field(min_length=1)]
    cam_bias: Annotated[str, Field(min_length=1)]


class HeatmapOutputNames(_Strict):
    """Tensor names of a ``probabilities-heatmap/1`` graph (see models.runtime).

    ``probabilities`` is ``[N, K]``; card label ``i`` is its column ``label_columns[i]``.
    ``heatmap`` is ``[N, h, w]`` (a map for a one-label card) or ``[N, L, h, w]`` in label order.
    """

    input: Annotated[str, Field(min_length=1)]
    probabilities: Annotated[str, Field(min_length=1)]
    label_columns: Annotated[tuple[Annotated[int, Field(ge=0)], ...], Field(min_length=1)]
    heatmap: Annotated[str, Field(min_length=1)]


class Provenance(_Strict):
    """Where the weights came from, so a result can be traced to its origin."""

    source: Annotated[str, Field(min_length=1)]
    description: str
    source_sha256: Annotated[str, Field(pattern=SHA256_PATTERN)] | None = None


class ModelCard(_Strict):
    """Everything a worker needs to run one model file and label its results honestly."""

    card_format: Literal[1]
    name: str
    version: str
    task: Literal["chest-xray-classification"]
    trained: bool
    labels: Annotated[tuple[LabelSpec, ...], Field(min_length=1)]
    input: InputContract
    preprocessing: Preprocessing
    # classifier-cam/1: probabilities + features + CAM weights carried in the graph (models.contract);
    # probabilities-heatmap/1: probabilities + a heatmap computed in the graph (e.g. Grad-CAM).
    interface: Literal["classifier-cam/1", "probabilities-heatmap/1"] = "classifier-cam/1"
    outputs: OutputNames | HeatmapOutputNames
    onnx_file: str
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)]
    provenance: Provenance
    intended_use: Annotated[str, Field(min_length=1)]
    limitations: tuple[str, ...]
    not_for_primary_diagnosis: Literal[True]

    @field_validator("name", "version", "onnx_file")
    @classmethod
    def _safe_identifier(cls, value: str) -> str:
        return validate_identifier(value, "name, version or file name")

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, value: tuple[LabelSpec, ...]) -> tuple[LabelSpec, ...]:
        names = [label.name for label in value]
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be unique: {names}")
        return value

    @model_validator(mode="after")
    def _outputs_match_interface(self) -> "ModelCard":
        wanted = OutputNames if self.interface == "classifier-cam/1" else HeatmapOutputNames
        if not isinstance(self.outputs, wanted):
            raise ValueError(f"outputs do not follow interface {self.interface}")
        if isinstance(self.outputs, HeatmapOutputNames) and len(self.outputs.label_columns) != len(
            self.labels
        ):
            raise ValueError("outputs.label_columns must name one column per label")
        return self

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    def with_sha256(self, sha256: str) -> "ModelCard":
        """A copy for another file content; validated again (``model_copy`` would not)."""
        return ModelCard.model_validate_json(
            json.dumps({**self.model_dump(mode="json"), "sha256": sha256})
        )

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<string>") -> "ModelCard":
        """Parse and validate a card; any problem is a ModelError naming ``source``."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ModelError(f"{source}: model card is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ModelError(f"{source}: model card must be a YAML mapping")
        try:
            # JSON mode keeps strictness but reads YAML sequences as tuples.
            as_json = json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{source}: model card holds a non-JSON value: {exc}") from exc
        try:
            return cls.model_validate_json(as_json)
        except ValidationError as exc:
            raise ModelError(f"{source}: invalid model card: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> "ModelCard":
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: cannot read model card: {exc}") from exc
        return cls.from_yaml(text, source=str(path))

    def save(self, path: Path) -> None:
        """Write the card; a temporary file and rename so readers never see half a card."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_yaml(), encoding="utf-8")
        tmp.replace(path)


def labels_with_codes(names: Iterable[str]) -> tuple[LabelSpec, ...]:
    """LabelSpecs for ``names`` with the codes of models.labels (local codes for unknown ones)."""
    specs = []
    for name in names:
        code = finding_code(name)
        specs.append(
            LabelSpec(
                name=name,
                code=CodedConcept(
                    value=code.value, scheme_designator=code.scheme_designator, meaning=code.meaning
                ),
            )
        )
    return tuple(specs)


CHEST_XRAY_INPUT = InputContract(
    modalities=("DX", "CR"),
    view_positions=("PA", "AP"),
    body_part="CHEST",
    photometric_interpretation="MONOCHROME2",
)

CHEXNET_PREPROCESSING = Preprocessing(
    input_size=224,
    resize_short_side=224,
    crop="center",
    interpolation="bilinear",
    rescale="uint8_to_unit",
    channels="gray_to_rgb",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)

# torchxrayvision DenseNet-121: (x / 255 - 0.5) * 2048 = x / 255 * 2048 - 1024, one channel.
XRV_GRAY_PREPROCESSING = Preprocessing(
    kind="xrv-gray",
    input_size=224,
    resize_short_side=224,
    crop="center",
    interpolation="bilinear",
    rescale="uint8_to_unit",
    channels="gray",
    mean=(0.5, 0.5, 0.5),
    std=(1 / 2048, 1 / 2048, 1 / 2048),
)

STANDARD_OUTPUT_NAMES = OutputNames(
    input=INPUT_NAME,
    probabilities=PROBABILITIES_NAME,
    features=FEATURES_NAME,
    cam_weight=CAM_WEIGHT_INITIALIZER,
    cam_bias=CAM_BIAS_INITIALIZER,
)
