"""Load PyTorch checkpoints without running code from them: a restricted unpickler.

A pickle is a program: every class or function it names (``GLOBAL``/``STACK_GLOBAL``, the
extension registry, ``INST``/``OBJ``) is looked up through ``Unpickler.find_class`` and may then be
called (``REDUCE``, ``NEWOBJ``) or have its ``__setstate__`` run (``BUILD``). Nothing else in the
format calls code, so an allow-list in ``find_class`` decides what a file can do. This module is
handed to ``torch.load`` as its ``pickle_module``: torch keeps reading its own zip and legacy
containers (storages come through ``persistent_load``), and every global in the file's pickles
goes through :meth:`RestrictedUnpickler.find_class`, which resolves only:

- tensor rebuilders ``torch._utils._rebuild_tensor``, ``_rebuild_tensor_v2``,
  ``_rebuild_parameter`` and ``torch.nn.parameter.Parameter`` (old pickles), which only wrap a
  storage that torch itself read;
- ``collections.OrderedDict`` and ``builtins.set`` (state dicts and module bookkeeping), and
  numpy's scalar reconstruction (``numpy.core.multiarray.scalar``, ``numpy.dtype``, numeric
  dtypes only), which some training scripts leave in a checkpoint's loss or epoch, and
  ``_codecs.encode`` for latin1 only (how protocol 2 writes ``bytes``);
- the module classes of the known architectures (torchvision's and torchxrayvision's DenseNet
  and its ``_DenseBlock``/``_DenseLayer``/``_Transition``, and the ``torch.nn`` layers they use),
  each mapped to a harmless :class:`PickledModule` placeholder that only stores the pickled
  ``__dict__`` (``_modules``, ``_parameters``, ``_buffers`` and plain attributes); no real
  module is built and no ``__init__`` or ``forward`` of the original code exists here;
- ``torch.nn.backends.thnn._get_thnn_function_backend``, which torch 0.3/0.4 pickled as every
  module's ``_backend``; it maps to a function returning None.

Any other global raises :class:`RefusedGlobalError` naming it, before anything is called. Storage
type names (``torch.FloatStorage``) are resolved by torch's own wrapper. TorchScript archives are
refused before ``torch.load`` sees them (torch would hand them to ``torch.jit.load``).
"""

import _compat_pickle
import collections
import io
import pickle
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

import numpy as np

from radlight.errors import ModelError

# The archive torch.save writes holds "<name>/data.pkl"; TorchScript adds "constants.pkl".
_TORCHSCRIPT_RECORD: Final = "constants.pkl"

_MODULE_CLASSES: Final[tuple[str, ...]] = (
    "torchvision.models.densenet.DenseNet",
    "torchvision.models.densenet._DenseBlock",
    "torchvision.models.densenet._DenseLayer",
    "torchvision.models.densenet._Transition",
    "torchxrayvision.models.DenseNet",
    "torchxrayvision.models._DenseBlock",
    "torchxrayvision.models._DenseLayer",
    "torchxrayvision.models._Transition",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.activation.Sigmoid",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.pooling.AvgPool2d",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.dropout.Dropout",
    "torch.nn.modules.upsampling.Upsample",
)


class RefusedGlobalError(pickle.UnpicklingError):
    """The pickle names a class or function that is not on the allow-list."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module = module
        self.name = name


class PickledModule:
    """Stand-in for one pickled ``torch.nn.Module``: its pickled ``__dict__``, nothing else.

    ``pickled_class`` is the dotted class path the file named (set on each generated subclass).
    """

    pickled_class: str = ""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(
                f"{self.pickled_class}: module state is {type(state).__name__}, not a dict"
            )
        self.state = dict(state)

    def children(self) -> dict[str, "PickledModule | None"]:
        """The ``_modules`` mapping (name -> placeholder, or None for an absent submodule)."""
        modules = self.state.get("_modules", {})
        if not isinstance(modules, dict):
            raise ModelError(f"{self.pickled_class}: _modules is not a mapping")
        for name, child in modules.items():
            if child is not None and not isinstance(child, PickledModule):
                raise ModelError(f"{self.pickled_class}: submodule {name!r} is not a module")
        return dict(modules)

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "PickledModule"]]:
        """This module and every descendant with its dotted path (``""`` for this one)."""
        yield prefix, self
        for name, child in self.children().items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def __repr__(self) -> str:
        return f"<pickled {self.pickled_class}>"


def _placeholder(dotted: str) -> type[PickledModule]:
    return type(
        f"Pickled_{dotted.rsplit('.', 1)[-1]}",
        (PickledModule,),
        {"pickled_class": dotted, "__module__": __name__},
    )


def _thnn_backend() -> None:
    """torch 0.3/0.4 pickled each module's ``_backend`` as a call to this; it carries nothing."""
    return None


def _allowed_globals() -> dict[str, Any]:
    import torch
    import torch._utils

    allowed: dict[str, Any] = {
        "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
        "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": set,
        "numpy.core.multiarray.scalar": _numpy_scalar,
        "numpy._core.multiarray.scalar": _numpy_scalar,
        "numpy.dtype": np.dtype,
        "_codecs.encode": _latin1_bytes,
        "torch.nn.backends.thnn._get_thnn_function_backend": _thnn_backend,
    }
    allowed.update({name: _placeholder(name) for name in _MODULE_CLASSES})
    return allowed


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """How protocol 2 pickles ``bytes`` (``_codecs.encode(text, 'latin1')``), and nothing more."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only for latin1 byte strings")
    return text.encode("latin1")


def _numpy_scalar(dtype: np.dtype[Any], data: bytes | None = None) -> object:
    """numpy's scalar reconstruction, for plain numeric dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r} is not allowed")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("malformed numpy scalar")
    return np.frombuffer(data, dtype=dtype)[0].item()


_ALLOWED: dict[str, Any] | None = None


def allowed_global_names() -> tuple[str, ...]:
    """Every dotted name a checkpoint may reference, sorted (for docs and error messages)."""
    return tuple(sorted(_allowed()))


def _allowed() -> dict[str, Any]:
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = _allowed_globals()
    return _ALLOWED


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only the allow-listed globals (see the module doc)."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles use Python 2 names (``__builtin__.set``); pickle's own find_class
        # translates them, and so must this override.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        resolved = _allowed().get(f"{module}.{name}")
        if resolved is None:
            raise RefusedGlobalError(module, name)
        return resolved


# The ``pickle_module`` protocol torch.load uses: ``Unpickler`` and ``load``.
Unpickler = RestrictedUnpickler


def load(file: IO[bytes], **kwargs: Any) -> Any:
    """``pickle.load`` through :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:
    return load(io.BytesIO(data), **kwargs)


# What a broken or hostile file can make torch.load or the unpickler raise.
_LOAD_ERRORS: tuple[type[Exception], ...] = (
    pickle.UnpicklingError,
    EOFError,
    RuntimeError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    UnicodeDecodeError,
    zipfile.BadZipFile,
    OverflowError,
    MemoryError,
)


def load_checkpoint(path: Path) -> object:
    """The object a ``torch.save`` file holds, unpickled with :class:`RestrictedUnpickler`.

    Tensors are mapped to the CPU. Raises ModelError naming the file: for a global that is not
    allowed (naming it), a TorchScript archive, or a file that torch cannot read as a checkpoint
    (truncated, not a checkpoint at all).
    """
    import torch
    import torch.serialization

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint file")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelError(f"{path}: unreadable zip archive: {exc}") from exc
        if any(name.rsplit("/", 1)[-1] == _TORCHSCRIPT_RECORD for name in names):
            raise ModelError(f"{path}: a TorchScript archive, not a checkpoint; refusing it")
    module = _this_module()
    try:
        with warnings.catch_warnings():
            # Legacy files carry their classes' source; ours differ (they are placeholders).
            warnings.simplefilter("ignore", torch.serialization.SourceChangeWarning)
            warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
            return torch.load(path, map_location="cpu", pickle_module=module, weights_only=False)
    except RefusedGlobalError as exc:
        raise ModelError(
            f"{path}: refused to load: the pickle references {exc.module}.{exc.name}, which is "
            "not on RadLight's allow-list of checkpoint classes (it could run arbitrary code)"
        ) from exc
    except OSError as exc:
        raise ModelError(f"{path}: cannot read checkpoint: {exc}") from exc
    except _LOAD_ERRORS as exc:
        raise ModelError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another format): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _this_module() -> Any:
    import sys

    return sys.modules[__name__]


def is_tensor_mapping(value: object) -> bool:
    import torch

    return isinstance(value, dict) and all(
        isinstance(key, str) and isinstance(item, torch.Tensor) for key, item in value.items()
    )
