"""Deterministic DICOM UIDs, so that re-running the same work replaces results instead of duplicating them."""

import re
import uuid

# A fixed namespace for RadLight's UUID5 values; changing it changes every result UID ever made.
RADLIGHT_UUID_NAMESPACE = uuid.UUID("8f0c7d3e-5a43-4b8e-9a4d-2f6a1c9e7b21")

_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def deterministic_uid(*parts: str) -> str:
    """Return a ``2.25.`` UID derived from ``parts`` (PS3.5 B.2): same parts, same UID."""
    if not parts:
        raise ValueError("deterministic_uid needs at least one part")
    key = "\x1f".join(parts)
    return f"2.25.{uuid.uuid5(RADLIGHT_UUID_NAMESPACE, key).int}"


def is_valid_uid(value: str) -> bool:
    """True when ``value`` is a syntactically valid DICOM UID (digits and dots, at most 64 chars)."""
    return 0 < len(value) <= 64 and _UID_PATTERN.match(value) is not None
