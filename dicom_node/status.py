"""Named DIMSE status codes (PS3.4 B.2.3, PS3.7 C), so no handler carries bare hex."""

STATUS_SUCCESS = 0x0000
# General failures (PS3.7 C.4)
STATUS_PROCESSING_FAILURE = 0x0110  # an unexpected fault of ours (a bug)
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
# Storage Service Class (PS3.4 B.2.3)
STATUS_OUT_OF_RESOURCES = 0xA700  # cannot record now (database down, store below watermark): retry
STATUS_OUT_OF_RESOURCES_TOO_LARGE = 0xA701  # instance over the configured size limit
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC210  # malformed or truncated encoding
STATUS_MISSING_REQUIRED_ATTRIBUTE = 0xC211  # no or invalid Study/Series/SOP Instance UID

TRANSIENT_FAILURES = frozenset({STATUS_PROCESSING_FAILURE})


def is_out_of_resources(status: int) -> bool:
    return 0xA700 <= status <= 0xA7FF


def is_success_or_warning(status: int) -> bool:
    """Success (0x0000) and the storage warnings (0xB000, 0xB006, 0xB007) all mean stored."""
    return status == STATUS_SUCCESS or 0xB000 <= status <= 0xBFFF
