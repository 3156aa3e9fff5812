"""highdicom's "is this attribute in that IOD?" answered once per question.

highdicom asks ``is_attribute_in_iod`` whenever it builds an object (its base class, for the
content date and time) and, through ``does_iod_have_pixel_data``, whenever it references a source
image (``ReferencedImageSequence``, ``ContributingEquipment.for_image_acquisition``, the SR's image
items). Each answer walks every attribute of every module of the IOD in its standard tables:
about 3 ms a source reference (highdicom 0.28.2, 2026-12), twice per Secondary Capture, so about
a third of a heatmap SC's build. The answer depends on the question alone (the tables are loaded
once and never change), so :func:`remember_iod_lookups` puts a cache in front of the function
wherever highdicom bound it; what it answers is unchanged.
"""

import functools
from collections.abc import Sequence

from highdicom import _standard_utils, base
from highdicom.sr import content as sr_content

_MODULES = (_standard_utils, base, sr_content)
_NAME = "is_attribute_in_iod"
_ORIGINAL = _standard_utils.is_attribute_in_iod


@functools.lru_cache(maxsize=1024)
def _cached(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
    return _ORIGINAL(attribute, sop_class_uid, exclude_path_elements=exclude)


def is_attribute_in_iod(
    attribute: str, sop_class_uid: str, exclude_path_elements: Sequence[str] | None = None
) -> bool:
    """highdicom's ``is_attribute_in_iod``, remembered (same arguments, same answer)."""
    exclude = None if exclude_path_elements is None else tuple(exclude_path_elements)
    return _cached(str(attribute), str(sop_class_uid), exclude)


def load_standard_tables() -> None:
    """Read highdicom's tables of the standard now: 0.3 s, nearly all of it the JSON of its
    module-attribute map, which highdicom reads on the first lookup and keeps. A worker's parent
    process calls this before it forks, so that its children share the tables instead of each
    reading them during its first job, which took 0.3 s longer for it."""
    _standard_utils.get_sop_class_iod_map()
    _standard_utils.get_iod_module_map()
    _standard_utils.get_module_attribute_map()


def remember_iod_lookups() -> None:
    """Answer highdicom's IOD lookups from the cache from now on, in this process (idempotent).

    ``does_iod_have_pixel_data`` looks ``is_attribute_in_iod`` up in its module at each call, so
    it is cached too.
    """
    for module in _MODULES:
        if getattr(module, _NAME, None) is _ORIGINAL:
            setattr(module, _NAME, is_attribute_in_iod)
