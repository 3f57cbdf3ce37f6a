"""optuna studies named after ours, linked by id

Each Optuna study was named ``hpsearch-<hex>``, and our row found it by that name
(``hps_studies.optuna_name``). From here on our row links it by Optuna's study id
(``optuna_study_id``), so a name can change without breaking anything, and the study is renamed
``<name>#<id>`` (``digits-bn-clip#12``) for the people who read Optuna's storage with Optuna's own
tools. The old name stays with our row, renamed ``uid``: a key no other study ever had, which the
service's caches use (SQLite hands a deleted study's id to the next one).

Only ``studies.study_name`` of Optuna's tables is written, with SQL: Optuna has no call that renames
a study, and copying each one to a new name (``optuna.copy_study``) would give its trials new ids,
which our ``hps_trials`` rows are keyed by. No table is rebuilt: on SQLite that would mean dropping
``hps_studies``, which with foreign keys on deletes every trial; so there ``optuna_study_id`` is
unique by an index and may be NULL to SQLite (never to the service), where PostgreSQL has the
constraints.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 02:40:12.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    op.add_column("hps_studies", sa.Column("optuna_study_id", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE hps_studies SET optuna_study_id = "
        "(SELECT s.study_id FROM studies s WHERE s.study_name = hps_studies.optuna_name)"
    )
    lost = bind.execute(
        sa.text("SELECT id, name, optuna_name FROM hps_studies WHERE optuna_study_id IS NULL")
    ).all()
    if lost:
        which = ", ".join(f"{id_} ({name!r}, Optuna study {old!r})" for id_, name, old in lost)
        raise RuntimeError(
            f"studies whose Optuna study is missing from the database: {which}; restore those "
            "Optuna studies (from a backup) or delete these rows of hps_studies, then migrate again"
        )
    taken = bind.execute(
        sa.text(
            "SELECT s.study_name FROM studies s JOIN hps_studies h "
            "ON s.study_name = h.name || '#' || CAST(h.id AS VARCHAR(20)) "
            "WHERE s.study_id <> h.optuna_study_id"
        )
    ).scalars()
    if names := ", ".join(repr(name) for name in taken):
        raise RuntimeError(
            f"Optuna studies made outside the service hold the names ours are to get: {names}; "
            "rename them (or delete them), then migrate again"
        )
    op.execute(
        "UPDATE studies SET study_name = ("
        "SELECT h.name || '#' || CAST(h.id AS VARCHAR(20)) FROM hps_studies h "
        "WHERE h.optuna_study_id = studies.study_id"
        ") WHERE study_id IN (SELECT optuna_study_id FROM hps_studies)"
    )
    op.execute("ALTER TABLE hps_studies RENAME COLUMN optuna_name TO uid")
    if postgres:
        op.execute(
            "ALTER TABLE hps_studies RENAME CONSTRAINT uq_hps_studies_optuna_name TO "
            "uq_hps_studies_uid"
        )
        op.alter_column("hps_studies", "optuna_study_id", nullable=False)
        op.create_unique_constraint(
            "uq_hps_studies_optuna_study_id", "hps_studies", ["optuna_study_id"]
        )
    else:
        op.create_index(
            "uq_hps_studies_optuna_study_id", "hps_studies", ["optuna_study_id"], unique=True
        )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    # Back to the names 0003 looks its studies up by.
    op.execute(
        "UPDATE studies SET study_name = ("
        "SELECT h.uid FROM hps_studies h WHERE h.optuna_study_id = studies.study_id"
        ") WHERE study_id IN (SELECT optuna_study_id FROM hps_studies)"
    )
    op.execute("ALTER TABLE hps_studies RENAME COLUMN uid TO optuna_name")
    if postgres:
        op.execute(
            "ALTER TABLE hps_studies RENAME CONSTRAINT uq_hps_studies_uid TO "
            "uq_hps_studies_optuna_name"
        )
        op.drop_constraint("uq_hps_studies_optuna_study_id", "hps_studies", type_="unique")
        op.drop_column("hps_studies", "optuna_study_id")
    else:
        op.drop_index("uq_hps_studies_optuna_study_id", "hps_studies")
        op.execute("ALTER TABLE hps_studies DROP COLUMN optuna_study_id")
