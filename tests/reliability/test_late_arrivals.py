"""Duplicates and late arrivals, end to end on real processes (PostgreSQL, Redis, Orthanc, dcmtk).

The same instance sent twice is stored once and makes no second result. An instance that arrives
after its study was processed re-opens the study; the new job's findings report is an amended
version: its series says so and its Predecessor Documents Sequence names the report it supersedes
(docs/DECISIONS.md, "Late instances: an amended report").
"""

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from db.models import Instance, Job, JobState, Result, ResultKind, Study, StudyState
from tests.peers import dciodvfy_errors, storescu, wait_for
from tests.reliability.stack import (
    deployment,
    make_study,
    pacs_file,
    pacs_instances,
    study_counts,
    wait_delivered,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FINAL = {str(state) for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.NOT_ANALYSED)}


def test_duplicate_stored_once_and_late_instance_makes_an_amended_report(
    tmp_path: Path, real_dicom_files: list[Path]
) -> None:
    with deployment(tmp_path) as deployed:
        engine, port, orthanc = deployed.engine, deployed.port, deployed.orthanc
        node, worker = deployed.node, deployed.worker
        assert orthanc is not None
        assert node is not None
        assert worker is not None

        study_uid, (first,) = make_study(real_dicom_files[0], tmp_path / "in")
        assert storescu(port, first).returncode == 0
        first_counts = wait_delivered(engine, study_uid, node, worker)
        assert first_counts.jobs == [("succeeded", 1)]
        first_in_pacs = set(pacs_instances(orthanc, study_uid))
        assert len(first_in_pacs) == first_counts.results

        # 1. The same instance again: stored once (counted twice), re-assembled, no new job.
        assert storescu(port, first).returncode == 0

        def reassembled() -> bool:
            node.assert_alive()
            with engine.connect() as conn:
                state = conn.execute(
                    select(Study.state).where(Study.study_instance_uid == study_uid)
                ).scalar_one()
            return state == StudyState.COMPLETE

        wait_for(reassembled, timeout=60, what="re-assembly after the duplicate")
        with engine.connect() as conn:
            assert conn.execute(select(Instance.received_count)).scalars().all() == [2]
        assert study_counts(engine, study_uid).jobs == [("succeeded", 1)]
        assert set(pacs_instances(orthanc, study_uid)) == first_in_pacs

        # 2. A late instance after the study was processed: re-opened, a second job, amended.
        _, (late,) = make_study(real_dicom_files[1], tmp_path / "late", study_uid=study_uid)
        assert storescu(port, late).returncode == 0

        def two_jobs_done() -> bool:
            worker.assert_alive()
            jobs = study_counts(engine, study_uid).jobs
            return len(jobs) == 2 and all(state in FINAL for state, _ in jobs)

        wait_for(two_jobs_done, timeout=90, what="the late instance's job")
        counts = wait_delivered(engine, study_uid, node, worker)
        assert counts.jobs == [("succeeded", 1), ("succeeded", 1)]
        with engine.connect() as conn:
            reports = conn.execute(
                select(Result.sop_instance_uid, Result.summary, Job.input_sop_instance_uids)
                .join(Job, Result.job_id == Job.id)
                .where(Result.kind == ResultKind.FINDINGS_SR, Job.state == JobState.SUCCEEDED)
                .order_by(Job.id)
            ).all()
        (old_uid, old_summary, old_inputs), (new_uid, new_summary, new_inputs) = reports
        assert len(old_inputs) == 1
        assert len(new_inputs) == 2  # the late instance joined the earlier one
        assert old_summary["version"] == 1
        assert old_summary["amends"] is None
        assert new_summary["version"] == 2
        assert new_summary["amends"] == old_uid

        in_pacs = pacs_instances(orthanc, study_uid)
        assert len(in_pacs) == len(set(in_pacs)) == counts.results
        assert first_in_pacs < set(in_pacs)  # the first version stays; the new one adds to it
        amended = pydicom.dcmread(BytesIO(pacs_file(orthanc, new_uid)))
        assert "findings v2 (amended)" in amended.SeriesDescription
        assert "not for primary diagnosis" in amended.SeriesDescription.lower()
        (predecessor,) = amended.PredecessorDocumentsSequence
        assert predecessor.StudyInstanceUID == study_uid
        referenced = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert referenced.ReferencedSOPInstanceUID == old_uid
        path = tmp_path / "amended.dcm"
        path.write_bytes(pacs_file(orthanc, new_uid))
        errors, output = dciodvfy_errors(path)
        assert errors == [], output
        print(f"late arrival: version 2 report {new_uid} amends {old_uid}")
