"""Public CheXNet-style checkpoints -> our DenseNet-121 state dict, labels and preprocessing.

Three formats, each read with :func:`models.importers.safe_pickle.load_checkpoint`:

``arnoweng-chexnet``
    arnoweng/CheXNet ``model.pth.tar``: ``{'epoch', 'arch', 'state_dict', 'best_loss',
    'optimizer'}``; keys ``module.densenet121.features...`` with torchvision 0.2's dotted layer
    names (``norm.1``, ``conv.2``) and ``classifier.0`` (``Sequential(Linear(1024, 14),
    Sigmoid())``). Its authors test with ``Resize(256)`` and ``TenCrop(224)``; RadLight uses the
    centre crop of that resize (one crop, not the average of ten).
``jrzech-chexnet``
    jrzech/reproduce-chexnet ``checkpoint``: ``{'model', 'best_loss', 'epoch', 'rng_state',
    'LR'}`` where ``model`` is a whole pickled torchvision DenseNet-121 whose classifier is
    ``Sequential(Linear(1024, 14), Sigmoid())``; preprocessing ``Scale(224)``, ``CenterCrop(224)``
    and ImageNet mean/std, which is RadLight's default.
``xrv-densenet121``
    torchxrayvision DenseNet-121 ``.pt``: a whole pickled ``torchxrayvision.models.DenseNet``, one
    input channel, ``classifier = Linear(1024, 18)``, labels in ``targets``/``pathologies``
    (``""`` for an output the weights were not trained for; torchxrayvision's default list when
    the file names none), optional ``op_threshs``. Input: gray scaled to [-1024, 1024], 224x224.

The exported probabilities are ``sigmoid(logits)``: what torchxrayvision returns with
``apply_sigmoid=True`` and no ``op_threshs``. Its ``op_norm`` is a monotone remap that puts each
operating threshold at 0.5; RadLight carries those thresholds in the card instead (a label's
``threshold``), so decisions are the same and the scores stay calibrated probabilities. Outputs
with an empty label are dropped from the exported model (their rows of the classifier are
removed): they were not trained and RadLight reports nothing it cannot name.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from models.card import CHEXNET_PREPROCESSING, XRV_GRAY_PREPROCESSING, Preprocessing
from models.importers.safe_pickle import PickledModule
from models.labels import CHEST_XRAY14_LABELS
from radlight.errors import ModelError

if TYPE_CHECKING:
    import torch

Format = Literal["arnoweng-chexnet", "jrzech-chexnet", "xrv-densenet121"]
FORMATS: Final[tuple[Format, ...]] = ("arnoweng-chexnet", "jrzech-chexnet", "xrv-densenet121")

# torchxrayvision.datasets.default_pathologies, the order of its 18 DenseNet outputs.
XRV_DEFAULT_PATHOLOGIES: Final[tuple[str, ...]] = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)

ARNOWENG_PREPROCESSING = CHEXNET_PREPROCESSING.model_copy(update={"resize_short_side": 256})

# torchvision's own rule for its pre-0.3 key names (DenseNet._load_state_dict), plus the
# ``num_batches_tracked`` buffer that such a model gets when a newer torch saves it again.
_OLD_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)
_TORCHVISION_DENSENET = "torchvision.models.densenet.DenseNet"
_XRV_DENSENET = "torchxrayvision.models.DenseNet"
_SEQUENTIAL = "torch.nn.modules.container.Sequential"
_LINEAR = "torch.nn.modules.linear.Linear"
_SIGMOID = "torch.nn.modules.activation.Sigmoid"


@dataclass(frozen=True)
class ConvertedCheckpoint:
    """A checkpoint in our terms: DenseNet-121 state dict, labels and how to feed it."""

    state_dict: dict[str, "torch.Tensor"]
    labels: tuple[str, ...]
    thresholds: tuple[float | None, ...]
    in_channels: int
    preprocessing: Preprocessing
    notes: tuple[str, ...]


def convert(fmt: str, checkpoint: object, *, source: str) -> ConvertedCheckpoint:
    """Dispatch on ``fmt`` (one of :data:`FORMATS`); ModelError when the content does not fit."""
    if fmt == "arnoweng-chexnet":
        return _convert_arnoweng(checkpoint, source=source)
    if fmt == "jrzech-chexnet":
        return _convert_jrzech(checkpoint, source=source)
    if fmt == "xrv-densenet121":
        return _convert_xrv(checkpoint, source=source)
    raise ModelError(f"unknown checkpoint format {fmt!r}; known: {', '.join(FORMATS)}")


def normalise_key(key: str) -> str:
    """Old torchvision DenseNet names (``norm.1``) -> current ones (``norm1``)."""
    match = _OLD_DENSE_KEY.match(key)
    return match.group(1) + match.group(2) if match else key


def _convert_arnoweng(checkpoint: object, *, source: str) -> ConvertedCheckpoint:
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ModelError(
            f"{source}: not an arnoweng/CheXNet checkpoint: expected a dict with 'state_dict', "
            f"found {_describe(checkpoint)}"
        )
    raw = checkpoint["state_dict"]
    if not _is_tensor_dict(raw):
        raise ModelError(f"{source}: 'state_dict' is not a mapping of names to tensors")
    renamed: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        name = key.removeprefix("module.").removeprefix("densenet121.")
        name = name.replace("classifier.0.", "classifier.", 1)
        renamed[normalise_key(name)] = value
    return ConvertedCheckpoint(
        state_dict=renamed,
        labels=CHEST_XRAY14_LABELS,
        thresholds=(None,) * len(CHEST_XRAY14_LABELS),
        in_channels=3,
        preprocessing=ARNOWENG_PREPROCESSING,
        notes=(
            f"arch {checkpoint.get('arch')!r}, epoch {checkpoint.get('epoch')!r}",
            "the authors average TenCrop(224) of Resize(256); RadLight scores the centre crop",
        ),
    )


def _convert_jrzech(checkpoint: object, *, source: str) -> ConvertedCheckpoint:
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), PickledModule):
        raise ModelError(
            f"{source}: not a jrzech/reproduce-chexnet checkpoint: expected a dict whose 'model' "
            f"is a pickled torchvision DenseNet, found {_describe(checkpoint)}"
        )
    model: PickledModule = checkpoint["model"]
    if model.pickled_class != _TORCHVISION_DENSENET:
        raise ModelError(
            f"{source}: 'model' is a {model.pickled_class}, not {_TORCHVISION_DENSENET}"
        )
    classifier = model.children().get("classifier")
    layers = [] if classifier is None else list(classifier.children().values())
    classes = [layer.pickled_class if layer is not None else "None" for layer in layers]
    if (
        classifier is None
        or classifier.pickled_class != _SEQUENTIAL
        or classes
        != [
            _LINEAR,
            _SIGMOID,
        ]
    ):
        raise ModelError(
            f"{source}: the classifier must be Sequential(Linear, Sigmoid), is "
            f"{classifier.pickled_class if classifier else None} of {classes}"
        )
    state = {
        normalise_key(key).replace("classifier.0.", "classifier.", 1): value
        for key, value in module_state_dict(model, source=source).items()
    }
    return ConvertedCheckpoint(
        state_dict=state,
        labels=CHEST_XRAY14_LABELS,
        thresholds=(None,) * len(CHEST_XRAY14_LABELS),
        in_channels=3,
        preprocessing=CHEXNET_PREPROCESSING,
        notes=(
            f"epoch {checkpoint.get('epoch')!r}, best_loss {_scalar(checkpoint.get('best_loss'))}",
        ),
    )


def _convert_xrv(checkpoint: object, *, source: str) -> ConvertedCheckpoint:
    import torch

    if not isinstance(checkpoint, PickledModule) or checkpoint.pickled_class != _XRV_DENSENET:
        raise ModelError(
            f"{source}: not a torchxrayvision DenseNet file: expected a pickled {_XRV_DENSENET}, "
            f"found {_describe(checkpoint)}"
        )
    classifier = checkpoint.children().get("classifier")
    if classifier is None or classifier.pickled_class != _LINEAR:
        raise ModelError(f"{source}: the classifier must be a Linear layer")
    state = {
        normalise_key(key): value
        for key, value in module_state_dict(checkpoint, source=source).items()
        if key != "op_threshs"
    }
    weight, bias = state.get("classifier.weight"), state.get("classifier.bias")
    if weight is None or bias is None or weight.ndim != 2:
        raise ModelError(f"{source}: classifier weight or bias missing")
    num_outputs = weight.shape[0]
    labels = _xrv_labels(checkpoint, num_outputs, source=source)
    thresholds = _xrv_thresholds(checkpoint, num_outputs, source=source)
    keep = [i for i, label in enumerate(labels) if label]
    if not keep:
        raise ModelError(f"{source}: every output has an empty label; nothing to import")
    dropped = [i for i, label in enumerate(labels) if not label]
    index = torch.tensor(keep, dtype=torch.long)
    state["classifier.weight"] = weight.index_select(0, index)
    state["classifier.bias"] = bias.index_select(0, index)
    conv0 = state.get("features.conv0.weight")
    in_channels = int(conv0.shape[1]) if conv0 is not None and conv0.ndim == 4 else 1
    if in_channels != 1:
        raise ModelError(
            f"{source}: expected one input channel (torchxrayvision), found {in_channels}"
        )
    notes = [f"outputs: {len(keep)} labelled of {num_outputs}"]
    if dropped:
        notes.append(f"outputs {dropped} have no label (not trained) and were dropped")
    return ConvertedCheckpoint(
        state_dict=state,
        labels=tuple(labels[i] for i in keep),
        thresholds=tuple(thresholds[i] for i in keep),
        in_channels=in_channels,
        preprocessing=XRV_GRAY_PREPROCESSING,
        notes=tuple(notes),
    )


def _xrv_labels(model: PickledModule, count: int, *, source: str) -> tuple[str, ...]:
    for attribute in ("targets", "pathologies"):
        value = model.state.get(attribute)
        if value is None:
            continue
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ModelError(f"{source}: {attribute} is not a list of label names")
        if len(value) != count:
            raise ModelError(f"{source}: {attribute} names {len(value)} labels for {count} outputs")
        named = [v for v in value if v]
        if len(set(named)) != len(named):
            raise ModelError(f"{source}: {attribute} repeats a label: {list(value)}")
        return tuple(value)
    if count != len(XRV_DEFAULT_PATHOLOGIES):
        raise ModelError(
            f"{source}: no label list in the file and {count} outputs (the default list has "
            f"{len(XRV_DEFAULT_PATHOLOGIES)})"
        )
    return XRV_DEFAULT_PATHOLOGIES


def _xrv_thresholds(model: PickledModule, count: int, *, source: str) -> tuple[float | None, ...]:
    import torch

    buffers = model.state.get("_buffers", {})
    value = buffers.get("op_threshs") if isinstance(buffers, dict) else None
    if value is None:
        value = model.state.get("op_threshs")
    if value is None:
        return (None,) * count
    if isinstance(value, torch.Tensor):
        values = [float(v) for v in value.detach().reshape(-1).tolist()]
    elif isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value):
        values = [float(v) for v in value]
    else:
        raise ModelError(f"{source}: op_threshs is neither a tensor nor a list of numbers")
    if len(values) != count:
        raise ModelError(f"{source}: {len(values)} op_threshs for {count} outputs")
    return tuple(v if 0.0 <= v <= 1.0 else None for v in values)  # NaN: no threshold


def module_state_dict(root: PickledModule, *, source: str) -> dict[str, "torch.Tensor"]:
    """``state_dict()`` of a pickled module tree: parameters and persistent buffers, dotted."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for path, module in root.named_modules():
        prefix = f"{path}." if path else ""
        skip = module.state.get("_non_persistent_buffers_set") or set()
        for field in ("_parameters", "_buffers"):
            tensors = module.state.get(field, {})
            if not isinstance(tensors, dict):
                raise ModelError(f"{source}: {module.pickled_class}.{field} is not a mapping")
            for name, tensor in tensors.items():
                if tensor is None or (field == "_buffers" and name in skip):
                    continue
                if not isinstance(tensor, torch.Tensor):
                    raise ModelError(f"{source}: {prefix}{name} is not a tensor")
                out[prefix + name] = tensor.detach()
    return out


def _is_tensor_dict(value: object) -> bool:
    import torch

    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _scalar(value: object) -> str:
    import torch

    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return repr(float(value))
    return repr(value) if isinstance(value, int | float | str | None) else type(value).__name__


def _describe(value: object) -> str:
    if isinstance(value, PickledModule):
        return f"a pickled {value.pickled_class}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))[:10]}"
    return f"a {type(value).__name__}"
