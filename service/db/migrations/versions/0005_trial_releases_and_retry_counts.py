"""trial releases and retry counts

A worker can hand a trial back (``POST /api/v1/trials/{id}/release``): because it is stopping
(the trial is re-run at once, no retry used) or because the trial's process died (re-run up to
the spec's ``max_retries``). ``hps_trials`` counts its re-runs by cause, ``crashes`` (the trial
process died) and ``losses`` (its worker stopped heartbeating), so that the two limits are each
checked against their own count; ``attempt`` no longer says how often a worker was lost.
``hps_trial_releases`` keeps each release, so that a repeated one gets the first one's answer.

Until now a trial was re-run only when its worker was lost, so an existing trial's ``losses`` is
its ``attempt - 1``. The columns are added in place (no table rebuild: on SQLite that would
drop ``hps_trials``, and with foreign keys on, every epoch with it).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "hps_trials", sa.Column("crashes", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "hps_trials", sa.Column("losses", sa.Integer(), server_default="0", nullable=False)
    )
    op.execute("UPDATE hps_trials SET losses = attempt - 1 WHERE attempt > 1")
    op.create_table(
        "hps_trial_releases",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=200), nullable=False),
        sa.Column("cause", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("retries_left", sa.Integer(), nullable=False),
        sa.Column("released_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["hps_trials.id"],
            name=op.f("fk_hps_trial_releases_trial_id_hps_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trial_id", "attempt", name=op.f("pk_hps_trial_releases")),
    )


def downgrade() -> None:
    op.drop_table("hps_trial_releases")
    with op.batch_alter_table("hps_trials", recreate="never") as batch_op:
        batch_op.drop_column("losses")
        batch_op.drop_column("crashes")
