"""Cheap copies of made datasets, for builders that repeat the same sub-tree in every document.

Why it exists (measured, bench/bench_sr_build.py): a findings SR holds about 400 small items
(codes, algorithm identification, units) that are the same in every report but for a few values.
Made with highdicom's templates, each costs 50-150 µs (every attribute goes through pydicom's
``Dataset.__setattr__``, every code through ``CodedConcept``); even ``Dataset()`` costs 20 µs.
A builder makes such a sub-tree once with highdicom (the reference) and copies it per document
with :func:`copy_tree`, in about 2 µs an item.

A copy shares no Dataset, Sequence or DataElement with its original: every item is a new
``pydicom.Dataset`` (a plain one, whatever the original's class), every element a new
``DataElement`` holding the same value, and a value is shared only where it is immutable (a
string, a UID, a number); any other value is deep-copied. So a document may change its copy
without changing the prototype or another document.

To be fast it makes datasets and elements without their constructors: a Dataset gets the
attributes a new ``Dataset()`` has (read once, at import, so a pydicom upgrade that adds one is
followed), with fresh containers for the mutable ones; an element gets its original's
attributes. tests/workers/test_sr_fast.py holds the copies to the template-built originals, byte for byte.
"""

import copy

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

_BLANK = dict(Dataset().__dict__)
_MUTABLE_BLANK = tuple(
    (name, value) for name, value in _BLANK.items() if isinstance(value, dict | list | set)
)
# Values no one can change in place (with their subclasses: UID, DSfloat, IS).
_IMMUTABLE = (str, int, float, bytes, type(None))


def new_dataset() -> Dataset:
    """An empty Dataset, as ``Dataset()`` makes it, ten times faster."""
    dataset: Dataset = Dataset.__new__(Dataset)
    attributes = dataset.__dict__
    attributes.update(_BLANK)
    for name, value in _MUTABLE_BLANK:
        attributes[name] = copy.copy(value)
    return dataset


def copy_tree(original: Dataset) -> Dataset:
    """A copy of ``original`` and of every item below it (see the module docstring)."""
    dataset = new_dataset()
    dataset.__dict__.update(
        _read_implicit=original._read_implicit,
        _read_little=original._read_little,
        _read_charset=original._read_charset,
        _parent_encoding=original._parent_encoding,
        is_undefined_length_sequence_item=original.is_undefined_length_sequence_item,
    )
    elements = dataset._dict
    for tag, element in original._dict.items():
        if not isinstance(element, DataElement):
            raise TypeError(f"element {tag} of a prototype is raw; decode it first")
        elements[tag] = copy_element(element)
    return dataset


def copy_element(original: DataElement) -> DataElement:
    """A new element with ``original``'s attributes; a sequence's items are copied too."""
    element: DataElement = DataElement.__new__(DataElement)
    element.__dict__.update(original.__dict__)
    value = original._value
    if original.VR == "SQ":
        element._value = Sequence([copy_tree(item) for item in value])
    elif not isinstance(value, _IMMUTABLE):
        element._value = copy.deepcopy(value)
    return element
