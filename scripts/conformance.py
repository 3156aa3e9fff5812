"""Write docs/CONFORMANCE.md, RadLight's DICOM conformance statement, from the code's own lists.

The SCP's SOP classes and transfer syntaxes are read from the AE the node really builds
(``dicom_node.scp.make_ae``), its status codes from ``dicom_node.status``, the delivery SCU's
proposed transfer syntaxes from ``dicom_node.scu``, the result objects from ``db.models.ResultKind``
and the SC encodings from ``workers.results.sc``. A test regenerates the file and compares, so the
statement cannot drift from the code.

Usage: ``python scripts/conformance.py [--output PATH]`` (default: docs/CONFORMANCE.md).
"""

import argparse
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    ComprehensiveSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from pynetdicom import sop_class as pynetdicom_sop_classes
from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from db.models import ResultKind  # noqa: E402
from dicom_node import status as node_status  # noqa: E402
from dicom_node.scp import make_ae  # noqa: E402
from dicom_node.scu import EXPLICIT_VR_LITTLE_ENDIAN, proposed_syntaxes  # noqa: E402
from radlight import __version__  # noqa: E402
from radlight.settings import Settings  # noqa: E402
from workers.results.sc import SUPPORTED_TRANSFER_SYNTAXES  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "docs" / "CONFORMANCE.md"
VERIFICATION = "1.2.840.10008.1.1"
# The SOP class of each result kind. workers/results builds each with the highdicom class of that
# IOD; a test fails when ResultKind gains a member this table does not name.
RESULT_SOP_CLASSES: dict[ResultKind, str] = {
    ResultKind.HEATMAP_SC: SecondaryCaptureImageStorage,
    ResultKind.SUMMARY_SC: SecondaryCaptureImageStorage,
    ResultKind.FINDINGS_SR: ComprehensiveSRStorage,
    ResultKind.NOT_ANALYSED_SR: ComprehensiveSRStorage,
    ResultKind.PROBABILITY_SEG: SegmentationStorage,
    ResultKind.REGION_GSPS: GrayscaleSoftcopyPresentationStateStorage,
    ResultKind.GROUNDED_SR: ComprehensiveSRStorage,
    ResultKind.GROUNDED_SC: SecondaryCaptureImageStorage,
}
RESULT_WHEN = {
    ResultKind.HEATMAP_SC: "per present finding (up to `RADLIGHT_OVERLAYS_PER_IMAGE` per image)",
    ResultKind.SUMMARY_SC: "per analysed image",
    ResultKind.FINDINGS_SR: "per job with analysed images (TID 1500 Measurement Report)",
    ResultKind.NOT_ANALYSED_SR: "per job where no image could be analysed, with the coded reason",
    ResultKind.PROBABILITY_SEG: "per analysed image, on routes with `--seg` (fractional)",
    ResultKind.REGION_GSPS: "per analysed image, on routes with `--gsps`",
    ResultKind.GROUNDED_SR: "per radiology report (a report SR the route takes, or text posted "
    "by REST): every sentence with its region (TID 1500)",
    ResultKind.GROUNDED_SC: "per report sentence with a region, over the first analysed image",
}


# pynetdicom knows some newer SOP classes that pydicom's UID dictionary does not name yet.
_PYNETDICOM_KEYWORDS = {
    str(value): keyword
    for keyword, value in vars(pynetdicom_sop_classes).items()
    if keyword[:1].isupper() and isinstance(value, str) and value.startswith("1.2.840.10008.")
}


def _uid_name(uid: str) -> str:
    name = str(UID(uid).name)
    if name == uid and uid in _PYNETDICOM_KEYWORDS:
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", _PYNETDICOM_KEYWORDS[uid])
    return name


def _decodable(uid: str) -> bool:
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _status_meaning(code: int) -> str:
    category, text = STORAGE_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS[code]
    return f"{category}: {text}" if text else category


def render() -> str:
    settings = Settings()
    ae = make_ae(settings)
    contexts = sorted(ae.supported_contexts, key=lambda cx: _uid_name(str(cx.abstract_syntax)))
    storage = [cx for cx in contexts if str(cx.abstract_syntax) != VERIFICATION]
    syntax_sets = {tuple(str(ts) for ts in cx.transfer_syntax) for cx in contexts}
    if len(syntax_sets) != 1:
        raise SystemExit("the SCP accepts different transfer syntaxes per SOP class: extend this")
    (syntaxes,) = syntax_sets
    statuses = sorted(
        (value, name)
        for name, value in vars(node_status).items()
        if name.startswith("STATUS_") and isinstance(value, int)
    )
    missing = set(ResultKind) - set(RESULT_SOP_CLASSES)
    if missing:
        raise SystemExit(f"result kinds without a SOP class in this script: {sorted(missing)}")

    out = [
        "<!-- Generated by scripts/conformance.py from the code; do not edit by hand. -->",
        "# DICOM Conformance Statement",
        "",
        f"RadLight {__version__}: an AI node for chest radiographs beside a PACS. It stores what a",
        "PACS or modality sends, analyses studies that its routing rules select, and sends the AI",
        "results back as standard DICOM objects. **Every result is an AI result and not for primary",
        "diagnosis.**",
        "",
        "## 1 Network services",
        "",
        *_table(
            ("SOP class", "role", "what RadLight does"),
            [
                ("Verification", "SCP", "answers C-ECHO"),
                ("Storage (every class in 2.1)", "SCP", "stores every instance as received"),
                (
                    "Storage (result classes in 3.1)",
                    "SCU",
                    "sends results to the destinations of the route",
                ),
            ],
        ),
        "",
        "No query/retrieve, worklist, MPPS, storage commitment or DICOMweb service is offered.",
        "",
        "## 2 Storage SCP (`radlight dicom-node`)",
        "",
        "### 2.1 SOP classes",
        "",
        f"The node accepts {len(storage)} storage SOP classes and Verification, each in every",
        "transfer syntax of 2.2, and does not negotiate SCP/SCU role selection or extended",
        "negotiation. Instances are written as received (no decoding, no re-encoding); only",
        "routing rules decide what is analysed (chest radiographs: CR, DX).",
        "",
        *_table(
            ("SOP class", "UID"),
            [(_uid_name(str(cx.abstract_syntax)), f"`{cx.abstract_syntax}`") for cx in contexts],
        ),
        "",
        "### 2.2 Transfer syntaxes",
        "",
        "Every SOP class above is accepted in each of these. *Analysed* says whether the worker",
        "can decode the pixel data for the models (pydicom's decoders available in this build);",
        "instances in the others are stored and reported as not analysed.",
        "",
        *_table(
            ("transfer syntax", "UID", "analysed"),
            [(_uid_name(ts), f"`{ts}`", "yes" if _decodable(ts) else "no") for ts in syntaxes],
        ),
        "",
        "### 2.3 Association policy",
        "",
        *_table(
            ("setting", "default", "variable"),
            [
                ("AE title", f"`{settings.ae_title}`", "`RADLIGHT_AE_TITLE`"),
                ("calling AE titles", "any", "`RADLIGHT_ALLOWED_CALLING_AES`"),
                (
                    "concurrent associations",
                    str(settings.max_associations),
                    "`RADLIGHT_MAX_ASSOCIATIONS`",
                ),
                (
                    "maximum PDU received",
                    "unlimited" if not settings.max_pdu_size else str(settings.max_pdu_size),
                    "`RADLIGHT_MAX_PDU_SIZE`",
                ),
                (
                    "ACSE, DIMSE and network timeouts",
                    f"{settings.network_timeout_s:g} s, {settings.dimse_timeout_s:g} s, "
                    f"{settings.network_timeout_s:g} s",
                    "`RADLIGHT_NETWORK_TIMEOUT_S`, `RADLIGHT_DIMSE_TIMEOUT_S`",
                ),
                (
                    "largest instance",
                    f"{settings.max_instance_bytes} bytes",
                    "`RADLIGHT_MAX_INSTANCE_BYTES`",
                ),
            ],
        ),
        "",
        "An association from a calling AE title not on the allow-list is rejected (permanent,",
        "calling AE title not recognised).",
        "",
        "### 2.4 C-STORE response status",
        "",
        "Success is answered only after the bytes are fsynced to the store and recorded in the",
        "database. A refused instance's reason is recorded and shown by the API.",
        "",
        *_table(
            ("status", "meaning (PS3.4 / PS3.7)", "RadLight's name"),
            [(f"`0x{code:04X}`", _status_meaning(code), f"`{name}`") for code, name in statuses],
        ),
        "",
        '`0xA700` means "not now, send again": the node answers it while it cannot record the',
        "instance (the database is unreachable, the store cannot be written) and when the store's",
        "free space is below `RADLIGHT_STORE_MIN_FREE_BYTES` (default",
        f"{settings.store_min_free_bytes} bytes), checked before the instance is written. Storage",
        "SCUs retry it. `0x0110` is kept for an unexpected fault of the node itself.",
        "",
        "## 3 Storage SCU (result delivery, `radlight worker`)",
        "",
        "### 3.1 SOP classes sent",
        "",
        *_table(
            ("result", "SOP class", "UID", "sent"),
            [
                (f"`{kind.value}`", _uid_name(uid), f"`{uid}`", RESULT_WHEN[kind])
                for kind, uid in sorted(RESULT_SOP_CLASSES.items(), key=lambda kv: kv[0].value)
            ],
        ),
        "",
        "All results go into the source study, with UIDs derived from the input set and the model",
        "version (a re-run replaces rather than duplicates; an fp16 copy's results are version",
        "`<version>+fp16`, so other objects), Contributing Equipment naming the algorithm, its version and",
        "checksum, and references to the source images.",
        "",
        "### 3.2 Transfer syntaxes",
        "",
        "Results are written in the transfer syntaxes below. For each file the SCU proposes one",
        "presentation context for its SOP class, with the transfer syntaxes of the last column: an",
        "uncompressed file in any uncompressed syntax, a compressed one only as it is written.",
        "",
        *_table(
            ("written as", "UID", "for", "proposed as"),
            [
                (
                    _uid_name(ts),
                    f"`{ts}`",
                    "every result (lossless)"
                    if ts == EXPLICIT_VR_LITTLE_ENDIAN
                    else "additional SC copies for destinations added with "
                    "`--sc-encoding jpeg_baseline` (lossy)",
                    ", ".join(_uid_name(s) for s in proposed_syntaxes(UID(ts))),
                )
                for ts in sorted(SUPPORTED_TRANSFER_SYNTAXES)
            ],
        ),
        "",
        "### 3.3 Responses and retries",
        "",
        "Success and warning statuses (`0x0000`, `0xB000`-`0xBFFF`) count as delivered. Out of",
        "resources (`0xA7xx`), processing failure (`0x0110`), no answer, an aborted or transiently",
        "rejected association are retried with exponential back-off",
        f"(`RADLIGHT_DELIVERY_MAX_ATTEMPTS`, default {settings.delivery_max_attempts};",
        f"`RADLIGHT_DELIVERY_BACKOFF_S`, default {settings.delivery_backoff_s:g} s); other",
        "failures, a permanent rejection, or a destination that does not accept the SOP class are",
        "permanent and recorded with the reason. The calling AE title is",
        f"`RADLIGHT_RESULT_AE_TITLE` (default `{settings.result_ae_title}`).",
        "",
        "## 4 Character sets and security",
        "",
        "Received instances are stored unchanged, whatever their character set. Results copy the",
        "patient and study attributes of their source. DICOM TLS is not offered by the node: run it",
        "on a trusted network segment or behind a TLS-terminating proxy, and restrict senders with",
        "the calling-AE allow-list and network policy (see helm/README.md).",
    ]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    args.output.write_text(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
