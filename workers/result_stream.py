"""Storing and sending a job's results while the next one is built.

A job's results come one at a time (``workers.analysis.iter_results``). The building thread fills
each into a temp file beside its place in the store (``InstanceStore.stage``) and goes on to the
next; a store thread fsyncs and renames it, and a send thread then sends it to each of the job's
destinations over the worker's kept associations. So the PACS stores one Secondary Capture while
the worker builds the next one, where before every result was built, written and recorded before
the first was sent (docs/PERFORMANCE.md, twelfth round).

The rows come after the files: ``stored`` waits until every file is durable in its place, the
caller records the results and their deliveries (already claimed) in one transaction, and ``sent``
gives each send's outcome to record. A result can reach a destination before its row exists. A
worker that dies in between leaves its job to be run again, which builds the same objects with
the same UIDs and sends them again; the PACS replaces or keeps its copy (docs/DECISIONS.md).
"""

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.uid import UID

from db.models import SCEncoding
from dicom_node.scu import KeptAssociations, Outgoing, Peer
from dicom_node.store import InstanceStore, StagedFile
from radlight.errors import DeliveryError, TransientDeliveryError
from workers.analysis import BuiltResult
from workers.results.encoding import write_part10

logger = logging.getLogger(__name__)

SendOutcome = int | DeliveryError  # the DIMSE status of a C-STORE, or why it was not stored


@dataclass(frozen=True)
class Target:
    """A destination as the job loaded it: where its results go, and which SCs it takes."""

    destination_id: int
    peer: Peer
    sc_encoding: SCEncoding

    def wants(self, item: BuiltResult) -> bool:
        """A Secondary Capture goes only where its encoding is wanted; the rest go everywhere."""
        return item.sc_encoding is None or item.sc_encoding is self.sc_encoding


@dataclass(frozen=True)
class StreamedResult:
    """A result whose file is (or is being) put in place: what recording it needs."""

    item: BuiltResult
    relative_path: str
    outgoing: Outgoing


def part10_writer(dataset: Dataset) -> Callable[[BinaryIO], None]:
    """A filler for the store that writes ``dataset`` as a Part-10 file straight into the file,
    with pydicom's bytes (its sequences encoded by :mod:`workers.results.encoding`)."""

    def write(handle: BinaryIO) -> None:
        write_part10(dataset, handle)

    return write


class ResultStream:
    """One job's results on their way to the store and to ``targets`` (none: stored only).

    ``add`` from the building thread, then ``stored``, then ``sent``; ``close`` always (a
    context manager): it cancels what has not started, waits for what has, and removes the temp
    files of results never put in place.
    """

    def __init__(
        self,
        store: InstanceStore,
        sender: KeptAssociations,
        targets: Sequence[Target],
        expected: Callable[[SCEncoding], Iterable[tuple[str, UID]]] | None = None,
    ) -> None:
        self._store = store
        self._sender = sender
        self.targets = list(targets)
        if expected is not None:  # one association proposes every class the job will send
            for target in self.targets:
                sender.expect(target.peer, expected(target.sc_encoding))
        self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="result-store")
        self._send_thread = ThreadPoolExecutor(1, thread_name_prefix="result-send")
        self._staged: list[StagedFile] = []
        self._commits: list[Future[None]] = []
        self._sends: list[Future[dict[int, SendOutcome]]] = []
        self._unreachable: dict[Peer, TransientDeliveryError] = {}  # the send thread's own
        self.results: list[StreamedResult] = []

    def __enter__(self) -> "ResultStream":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def add(self, item: BuiltResult) -> None:
        """Fill ``item``'s file now (StoreError if it cannot be), and have it put in place and
        then sent by the stream's threads."""
        dataset = item.dataset
        relative = self._store.result_path(
            str(dataset.StudyInstanceUID),
            str(dataset.SeriesInstanceUID),
            str(dataset.SOPInstanceUID),
        )
        staged = self._store.stage(relative, part10_writer(dataset))
        self._staged.append(staged)
        commit = self._store_thread.submit(staged.commit)
        self._commits.append(commit)
        outgoing = Outgoing(
            path=staged.target,
            sop_class_uid=str(dataset.SOPClassUID),
            transfer_syntax=UID(str(dataset.file_meta.TransferSyntaxUID)),
        )
        self.results.append(StreamedResult(item, relative, outgoing))
        if any(target.wants(item) for target in self.targets):
            self._sends.append(self._send_thread.submit(self._send, commit, item, outgoing))
        else:
            self._sends.append(_done({}))

    def stored(self) -> list[StreamedResult]:
        """Every result added so far, once each is durable in its place (StoreError if one could
        not be put there)."""
        for commit in self._commits:
            commit.result()
        self._store.sync_folders(self._staged)
        return self.results

    def sent(self) -> list[dict[int, SendOutcome]]:
        """Per result (in order), each target's outcome, keyed by destination id, once every
        send is over; the sent files then leave the page cache (``InstanceStore.drop_cached``)."""
        outcomes: list[dict[int, SendOutcome]] = []
        for streamed, send in zip(self.results, self._sends, strict=True):
            try:
                outcomes.append(send.result())
            except Exception as exc:  # whatever broke, the deliveries get retried
                logger.exception("sending %s failed unexpectedly", streamed.relative_path)
                error = TransientDeliveryError(f"sending failed: {type(exc).__name__}: {exc}")
                wanting = (t for t in self.targets if t.wants(streamed.item))
                outcomes.append(dict.fromkeys((t.destination_id for t in wanting), error))
        if self.targets:
            self._store.drop_cached(r.outgoing.path for r in self.results)
        return outcomes

    def close(self) -> None:
        """Cancel the sends and stores not started, wait for those running, and remove the temp
        files of results not put in place."""
        self._send_thread.shutdown(wait=True, cancel_futures=True)
        self._store_thread.shutdown(wait=True, cancel_futures=True)
        for staged in self._staged:
            staged.discard()

    def _send(
        self, commit: Future[None], item: BuiltResult, outgoing: Outgoing
    ) -> dict[int, SendOutcome]:
        """Send one result, once its file is in place, to every target that wants it. A target
        that could not be reached at all is not knocked on again for the rest of the job."""
        commit.result()  # a file that could not be put in place is not sent (stored() raises)
        outcomes: dict[int, SendOutcome] = {}
        for target in self.targets:
            if not target.wants(item):
                continue
            error: DeliveryError | None = self._unreachable.get(target.peer)
            if error is None:
                try:
                    outcomes[target.destination_id] = self._sender.send(target.peer, outgoing)
                    continue
                except DeliveryError as exc:
                    error = exc
                except OSError as exc:
                    error = TransientDeliveryError(f"cannot send the result: {exc}")
                if isinstance(error, TransientDeliveryError) and error.status is None:
                    self._unreachable[target.peer] = error  # no association at all
            outcomes[target.destination_id] = error
        return outcomes


def _done(outcomes: dict[int, SendOutcome]) -> Future[dict[int, SendOutcome]]:
    future: Future[dict[int, SendOutcome]] = Future()
    future.set_result(outcomes)
    return future
