"""One exception tree for RadLight; each edge of the system maps it.

    RadLightError
    ├── ConfigurationError          bad or missing settings (CLI exits non-zero)
    ├── StoreError                  the instance store could not persist or read bytes
    │   └── StoreFullError          no space left (DIMSE 0xA700 Out of Resources)
    ├── InvalidInstanceError        received bytes are not a usable DICOM instance
    │   ├── MalformedInstanceError    truncated or undecodable encoding (DIMSE 0xC210)
    │   ├── MissingAttributeError     no valid Study/Series/SOP Instance UID (DIMSE 0xC211)
    │   ├── SOPClassMismatchError     dataset disagrees with the negotiated SOP class (0xA900)
    │   ├── InstanceTooLargeError     over the size limit, or inflates beyond it (0xA701)
    │   └── UnsupportedSOPClassError  the SOP class is not one we store (DIMSE 0x0122)
    ├── NotAnalysableError          a valid instance the pipeline must not analyse
    │                                (lateral, non-chest, no pixel data): job "not_analysed"
    ├── ModelError                  model file missing, checksum mismatch, bad card
    │   └── ModelIntegrityError     sha256 of the ONNX file differs from its card
    ├── DeliveryError               C-STORE SCU to a destination failed
    │   ├── TransientDeliveryError  worth retrying (association refused, network, 0xA7xx)
    │   └── PermanentDeliveryError  retrying will not help (0xA9xx, 0xCxxx, 0x0122)
    └── JobStateError               a job was not in a state that allows the transition

Edges: the DICOM node maps to DIMSE statuses, workers map to retry-or-fail, the API maps to HTTP 4xx/5xx.
"""


class RadLightError(Exception):
    """Base of every error RadLight raises on purpose."""


class ConfigurationError(RadLightError):
    """Settings are missing or inconsistent."""


class StoreError(RadLightError):
    """The instance store could not persist or read bytes."""


class StoreFullError(StoreError):
    """The store's file system has no space left."""


class InvalidInstanceError(RadLightError):
    """Received bytes are not a usable DICOM instance (malformed, truncated, inconsistent)."""


class MalformedInstanceError(InvalidInstanceError):
    """The encoding is truncated or cannot be parsed."""


class MissingAttributeError(InvalidInstanceError):
    """A required identifying attribute is missing or invalid."""


class SOPClassMismatchError(InvalidInstanceError):
    """The dataset's SOP Class or Instance UID disagrees with the DIMSE request."""


class InstanceTooLargeError(InvalidInstanceError):
    """The instance, or what its deflated data set inflates to, is over the size limit."""


class UnsupportedSOPClassError(InvalidInstanceError):
    """The instance's SOP class is not one this node stores."""


class NotAnalysableError(RadLightError):
    """A valid instance that the pipeline must not analyse; the reason is shown to users."""


class ModelError(RadLightError):
    """A model or its card is missing or unusable."""


class ModelIntegrityError(ModelError):
    """The ONNX file's sha256 differs from the one its card promises."""


class DeliveryError(RadLightError):
    """Sending results to a destination failed; ``status`` is the peer's DIMSE status, if any."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientDeliveryError(DeliveryError):
    """A delivery failure that a later retry may fix."""


class PermanentDeliveryError(DeliveryError):
    """A delivery failure that retrying will not fix."""


class JobStateError(RadLightError):
    """A job was not in a state that allows the requested transition."""
