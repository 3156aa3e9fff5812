"""The calling AE titles the node accepts: the settings' list and the database's, read live.

The database's list is what the API edits, so it is re-read while the node runs, at most once every
``ttl_s`` seconds (on the association's thread, before negotiation). Empty on both sides means any
calling AE is accepted. When the database cannot be read the last list read is kept; if none was
ever read, :meth:`CallingAEAllowList.refresh` says so and the node refuses the association rather
than accept strangers.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterable

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.config import allowed_calling_aes

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 5.0


class CallingAEAllowList:
    """The settings' titles plus the AllowedCallingAE table, cached for ``ttl_s`` seconds; thread-safe."""

    def __init__(
        self,
        configured: Iterable[str] = (),
        *,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.configured = configured
        self._ttl_s = ttl_s
        self._clock = clock
        self._from_db: tuple[str, ...] | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    @property
    def configured(self) -> tuple[str, ...]:
        return self._configured

    @configured.setter
    def configured(self, titles: Iterable[str]) -> None:
        self._configured = tuple(t.strip() for t in titles if t.strip())

    def refresh(self, sessions: sessionmaker[Session]) -> bool:
        """Re-read the database's list if it is older than the TTL; False if none was ever read."""
        if self._clock() - self._read_at < self._ttl_s:
            return True
        with self._lock:
            now = self._clock()
            if now - self._read_at < self._ttl_s:
                return True
            try:
                with sessions() as session:
                    self._from_db = tuple(allowed_calling_aes(session=session))
            except SQLAlchemyError as exc:
                logger.warning("cannot read the calling-AE allow-list, keeping the last: %s", exc)
                return self._from_db is not None
            self._read_at = now
        return True

    def titles(self) -> list[str]:
        """The accepted calling AE titles; an empty list accepts any."""
        return sorted({*self._configured, *(self._from_db or ())})

    def accepts(self, calling_ae: str) -> bool:
        titles = self.titles()
        return not titles or calling_ae.strip() in titles
