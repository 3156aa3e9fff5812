"""Logging set-up for entry points: JSON lines with job/study/AE context, and no patient data.

Libraries and modules only call ``logging.getLogger(__name__)``; only entry points call
:func:`configure_logging`.
"""

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("radlight_log_context")


@contextmanager
def log_context(**values: object) -> Iterator[None]:
    """Bind ids (job_id, study_uid, calling_ae, ...) to every log record in this context."""
    current = dict(_context.get({}))
    current.update({key: str(value) for key, value in values.items() if value is not None})
    token = _context.set(current)
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.radlight_context = dict(_context.get({}))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, bound context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "radlight_context", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(
    level: str = "INFO", json_output: bool = True, dicom_level: str = "WARNING"
) -> None:
    """Configure the root logger once per process; silences pynetdicom's dataset dumps (PHI).

    ``dicom_level`` is pynetdicom's and pydicom's own level. Even at DEBUG they log no patient
    data: pynetdicom's per-message handlers and identifier dumps are switched off here
    (tests/integration/test_no_phi_in_logs.py runs the whole stack so).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if json_output:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom would log every dataset and identifier it handles (patient data).
    from pynetdicom import _config

    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    logging.getLogger("pynetdicom").setLevel(dicom_level.upper())
    logging.getLogger("pydicom").setLevel(dicom_level.upper())
