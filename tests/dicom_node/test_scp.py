"""The storage SCP against real senders: dcmtk's storescu, and pynetdicom for broken files."""

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID, JPEG2000Lossless, RLELossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from db.models import IngestFailure, Instance, Study
from dicom_node.node import DicomNode
from dicom_node.status import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_MISSING_REQUIRED_ATTRIBUTE,
    STATUS_SUCCESS,
)
from tests.dicom_node.conftest import node_settings
from tests.peers import echo_ok, storescu, wait_for


def _send_raw_file(port: int, path: Path, sop_class: str = SecondaryCaptureImageStorage) -> int:
    """pynetdicom's send_c_store with a path sends the file's bytes as they are."""
    ae = AE(ae_title="BADSENDER")
    ae.add_requested_context(sop_class, "1.2.840.10008.1.2")
    assoc = ae.associate("127.0.0.1", port, ae_title="RADLIGHT")
    assert assoc.is_established
    try:
        response = assoc.send_c_store(path)
        return int(response.Status)
    finally:
        assoc.release()


def _copy_with_new_uids(source: Path, target: Path, **changes: object) -> pydicom.Dataset:
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(target, enforce_file_format=True)
    return ds


def test_storescu_real_files_are_stored_byte_for_byte(
    node: DicomNode, real_dicom_files: list[Path]
) -> None:
    sent = storescu(node.settings.dicom_port, *real_dicom_files)
    assert sent.returncode == 0, sent.stderr
    with node.sessions() as session:
        instances = list(session.scalars(select(Instance).order_by(Instance.sop_instance_uid)))
        assert len(instances) == 2
        for instance in instances:
            stored = node.store.absolute(instance.relative_path)
            original = next(
                f
                for f in real_dicom_files
                if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
                == instance.sop_instance_uid
            )
            # Same encoded data set as sent (the file meta is the receiver's, as in any SCP).
            received = pydicom.dcmread(stored)
            sent_ds = pydicom.dcmread(original)
            assert received.PixelData == sent_ds.PixelData
            assert instance.transfer_syntax_uid == "1.2.840.10008.1.2"
        assert len(list(session.scalars(select(Study)))) == 2


def test_resent_instance_is_stored_once(node: DicomNode, real_dicom_files: list[Path]) -> None:
    for _ in range(2):
        assert storescu(node.settings.dicom_port, real_dicom_files[0]).returncode == 0
    with node.sessions() as session:
        (instance,) = session.scalars(select(Instance))
        assert instance.received_count == 2


@pytest.mark.parametrize(("syntax", "flag"), [(RLELossless, "-xr"), (JPEG2000Lossless, "-xv")])
def test_compressed_syntaxes_are_kept_as_received(
    node: DicomNode, real_dicom_files: list[Path], tmp_path: Path, syntax: str, flag: str
) -> None:
    ds = pydicom.dcmread(real_dicom_files[0])
    original_pixels = ds.pixel_array.copy()
    ds.SOPInstanceUID = generate_uid()
    ds.compress(syntax)
    path = tmp_path / "compressed.dcm"
    ds.save_as(path, enforce_file_format=True)
    sent = storescu(node.settings.dicom_port, path, extra=(flag,))
    assert sent.returncode == 0, sent.stderr
    with node.sessions() as session:
        instance = session.scalars(
            select(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID)
        ).one()
    assert instance.transfer_syntax_uid == syntax
    stored = pydicom.dcmread(node.store.absolute(instance.relative_path))
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert (stored.pixel_array == original_pixels).all()


def test_truncated_file_is_refused_recorded_and_the_node_goes_on(
    node: DicomNode, real_dicom_files: list[Path], tmp_path: Path
) -> None:
    raw = real_dicom_files[0].read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(raw[: len(raw) // 2])
    status = _send_raw_file(node.settings.dicom_port, truncated)
    assert status == STATUS_CANNOT_UNDERSTAND
    with node.sessions() as session:
        failure = session.scalars(select(IngestFailure)).one()
        assert failure.status == STATUS_CANNOT_UNDERSTAND
        assert "truncated" in failure.reason
        assert failure.quarantine_path is not None
        assert node.store.absolute(failure.quarantine_path).read_bytes()
        assert session.scalars(select(Instance)).all() == []
    assert echo_ok(node.settings.dicom_port)
    assert storescu(node.settings.dicom_port, real_dicom_files[1]).returncode == 0
    with node.sessions() as session:
        assert len(session.scalars(select(Instance)).all()) == 1


def test_garbage_and_missing_uids_get_specific_statuses(
    node: DicomNode, real_dicom_files: list[Path], tmp_path: Path
) -> None:
    no_study = tmp_path / "nostudy.dcm"
    ds = _copy_with_new_uids(real_dicom_files[0], no_study)
    del ds.StudyInstanceUID
    ds.save_as(no_study, enforce_file_format=True)
    assert _send_raw_file(node.settings.dicom_port, no_study) == STATUS_MISSING_REQUIRED_ATTRIBUTE

    good = tmp_path / "good.dcm"
    _copy_with_new_uids(real_dicom_files[0], good)
    assert _send_raw_file(node.settings.dicom_port, good) == STATUS_SUCCESS
    with node.sessions() as session:
        reasons = [f.reason for f in session.scalars(select(IngestFailure))]
    assert any("StudyInstanceUID" in reason for reason in reasons)


def test_calling_ae_allow_list_rejects_strangers(
    tmp_path: Path, database_url: str, real_dicom_files: list[Path]
) -> None:
    settings = node_settings(tmp_path, database_url, allowed_calling_aes="PACS, MODALITY1")
    dicom_node = DicomNode(settings)
    dicom_node.start()
    try:
        assert storescu(settings.dicom_port, real_dicom_files[0], calling_ae="PACS").returncode == 0
        refused = storescu(settings.dicom_port, real_dicom_files[1], calling_ae="INTRUDER")
        assert refused.returncode != 0
        assert "reject" in (refused.stdout + refused.stderr).lower()
        with dicom_node.sessions() as session:
            assert len(session.scalars(select(Instance)).all()) == 1
    finally:
        dicom_node.stop()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
def test_hostile_uid_is_refused_and_kept_in_quarantine(node: DicomNode, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.dcm"
    ds = pydicom.Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "../../etc/passwd"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2")
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3")
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    bogus.write_bytes(buffer.getvalue())
    status = _send_raw_file(node.settings.dicom_port, bogus)
    assert status == STATUS_MISSING_REQUIRED_ATTRIBUTE
    with node.sessions() as session:
        failure = session.scalars(select(IngestFailure)).one()
        assert "SOPInstanceUID" in failure.reason
        assert failure.quarantine_path is not None
        kept = pydicom.dcmread(node.store.absolute(failure.quarantine_path))
        assert kept.SOPInstanceUID == "../../etc/passwd"
    assert not (node.settings.store_dir / "etc").exists()


def test_association_limit_rejects_the_extra_association(tmp_path: Path, database_url: str) -> None:
    settings = node_settings(tmp_path, database_url, max_associations=1)
    dicom_node = DicomNode(settings)
    dicom_node.start()
    ae = AE(ae_title="PACS")
    ae.add_requested_context("1.2.840.10008.1.1")
    try:
        first = ae.associate("127.0.0.1", settings.dicom_port, ae_title="RADLIGHT")
        assert first.is_established
        second = ae.associate("127.0.0.1", settings.dicom_port, ae_title="RADLIGHT")
        assert second.is_rejected
        first.release()

        def third_accepted() -> bool:
            third = ae.associate("127.0.0.1", settings.dicom_port, ae_title="RADLIGHT")
            accepted = bool(third.is_established)
            if accepted:
                third.release()
            return accepted

        # Once the first is released, a new association is accepted again.
        assert wait_for(third_accepted, timeout=10, what="a free association slot")
    finally:
        dicom_node.stop()
