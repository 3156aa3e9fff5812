"""PostgreSQL: record a received instance in one statement (radlight_record_instance)

The node records every instance before it answers the C-STORE. As four statements in a transaction
that is six round trips to the server (BEGIN, four statements, COMMIT); this function does the same
upserts server-side, so that the node calls it once, in autocommit: one round trip. SQLite runs in
the node's process and keeps the statements (db/ingest.py); nothing is created there.

The function names the tables and columns of this schema: a later migration that changes them must
replace it (CREATE OR REPLACE FUNCTION), and tests/db/test_ingest_recording.py runs it on PostgreSQL.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 21:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIGNATURE = (
    "radlight_record_instance(varchar, varchar, varchar, varchar, varchar, varchar, varchar,"
    " varchar, varchar, bigint, varchar, varchar, varchar, integer, timestamptz)"
)

# The same statements, in the same order, as db.ingest.record_instance's SQLite path.
CREATE = """
CREATE OR REPLACE FUNCTION radlight_record_instance(
    p_study_uid varchar, p_series_uid varchar, p_sop_uid varchar, p_sop_class varchar,
    p_syntax varchar, p_modality varchar, p_body_part varchar, p_view varchar, p_path varchar,
    p_size bigint, p_digest varchar, p_calling varchar, p_called varchar, p_age integer,
    p_now timestamptz,
    OUT instance_id integer, OUT study_id integer, OUT duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_series_id integer;
BEGIN
    -- Any arrival re-opens the study for assembly.
    INSERT INTO study AS s (study_instance_uid, state, calling_ae, called_ae, instance_count,
                            first_received_at, last_received_at)
    VALUES (p_study_uid, 'receiving', p_calling, p_called, 0, p_now, p_now)
    ON CONFLICT (study_instance_uid) DO UPDATE
        SET state = excluded.state, calling_ae = excluded.calling_ae,
            called_ae = excluded.called_ae, last_received_at = excluded.last_received_at
    RETURNING s.id INTO study_id;

    -- The no-op update makes RETURNING give the id of an existing series too.
    INSERT INTO series AS se (study_id, series_instance_uid, modality, body_part_examined)
    VALUES (study_id, p_series_uid, p_modality, p_body_part)
    ON CONFLICT (series_instance_uid) DO UPDATE SET series_instance_uid = excluded.series_instance_uid
    RETURNING se.id INTO v_series_id;

    INSERT INTO instance AS i (series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid,
                               relative_path, size_bytes, sha256, view_position, patient_age_years,
                               received_count, received_at)
    VALUES (v_series_id, p_sop_uid, p_sop_class, p_syntax, p_path, p_size, p_digest, p_view, p_age,
            1, p_now)
    ON CONFLICT (sop_instance_uid) DO NOTHING
    RETURNING i.id INTO instance_id;

    duplicate := instance_id IS NULL;
    IF duplicate THEN
        UPDATE instance AS i
            SET sop_class_uid = p_sop_class, transfer_syntax_uid = p_syntax,
                relative_path = p_path, size_bytes = p_size, sha256 = p_digest,
                view_position = p_view, patient_age_years = p_age,
                received_count = i.received_count + 1, received_at = p_now
            WHERE i.sop_instance_uid = p_sop_uid
            RETURNING i.id INTO instance_id;
    ELSE
        UPDATE study AS s SET instance_count = s.instance_count + 1 WHERE s.id = study_id;
    END IF;
END
$$
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.exec_driver_sql(CREATE)  # as written: no bind-parameter parsing of the body


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {SIGNATURE}")
