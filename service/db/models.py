"""SQLAlchemy models of the service's own tables. Prefixed ``hps_`` so that they never collide
with Optuna's (``studies``, ``trials``, ...); migrated by Alembic with the version table
``hps_alembic_version`` (Optuna keeps its own ``alembic_version``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TABLE_PREFIX = "hps_"


def utcnow() -> datetime:
    """Now, as naive UTC (what every timestamp column stores)."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Study(Base):
    """A study: its spec, status and budget. Its Optuna study (``optuna_study_id``) holds the
    trials; Optuna names it ``<name>#<id>`` (``optuna_bridge.optuna_study_name``)."""

    __tablename__ = "hps_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # ``hpsearch-<hex>``: no other study, even a deleted one, ever had it (SQLite hands a deleted
    # study's id, and Optuna's, to the next study), so caches that outlive a request key on it.
    # Before migration 0004 it was the Optuna study's name; a new Optuna study bears it until
    # our row exists, and a deleted one from then on.
    uid: Mapped[str] = mapped_column(String(255), unique=True)
    # The link to Optuna's study: by id, so that renaming the Optuna study breaks nothing.
    optuna_study_id: Mapped[int] = mapped_column(Integer, unique=True)
    status: Mapped[str] = mapped_column(String(20), default="queued")
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_trials: Mapped[int] = mapped_column(Integer)
    # Slots handed out so far; never above n_trials (a conditional UPDATE keeps the budget exact).
    n_allocated: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped on every change to one of the study's trials: ``?after=N`` polling reads it.
    change_seq: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    last_assigned_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    # The uploaded dataset it trains on (no foreign key: a finished study outlives its data).
    dataset_id: Mapped[str | None] = mapped_column(String(20), default=None, index=True)


class Dataset(Base):
    """An uploaded dataset. Its bytes live in the artifact directory under their SHA-256, so
    two datasets with the same content (a CSV read with two label columns) share one file."""

    __tablename__ = "hps_datasets"

    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(8))
    label_column: Mapped[str | None] = mapped_column(String(200), default=None)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # Shapes, classes, class names and counts, features: what the upload's checks found.
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    downloads: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Trial(Base):
    """One trial as the service sees it: lease, attempt, outcome. ``id`` is Optuna's trial id."""

    __tablename__ = "hps_trials"
    __table_args__ = (
        UniqueConstraint("study_id", "number"),
        Index("ix_hps_trials_study_state", "study_id", "state"),
        Index("ix_hps_trials_study_seq", "study_id", "change_seq"),
        Index("ix_hps_trials_worker", "worker_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    study_id: Mapped[int] = mapped_column(ForeignKey("hps_studies.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20), default="running")
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    value: Mapped[float | None] = mapped_column(Float, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    worker_id: Mapped[str | None] = mapped_column(String(200), default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    # Re-runs so far, by cause: its trial process died (the spec's ``max_retries`` bounds them)
    # or its worker was lost (the service's ``HPSEARCH_MAX_RETRIES`` bounds them). A worker that
    # hands a trial back because it is stopping uses neither.
    crashes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    losses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    epochs_run: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float | None] = mapped_column(Float, default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # False between our commit of a final state and Optuna's tell: the reaper finishes the job.
    optuna_synced: Mapped[bool] = mapped_column(Boolean, default=True)
    change_seq: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)


class TrialEpoch(Base):
    """One reported epoch of one attempt of a trial, with the stop decision given for it."""

    __tablename__ = "hps_trial_epochs"

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("hps_trials.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    loss: Mapped[float] = mapped_column(Float)
    accuracy: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float] = mapped_column(Float)
    val_accuracy: Mapped[float] = mapped_column(Float)
    should_stop: Mapped[bool] = mapped_column(Boolean, default=False)
    stop_reason: Mapped[str | None] = mapped_column(Text, default=None)
    reported_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TrialRelease(Base):
    """A worker handing back one attempt of a trial (``POST /trials/{id}/release``): kept so that
    a repeated release gets the first one's answer."""

    __tablename__ = "hps_trial_releases"

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("hps_trials.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(200))
    cause: Mapped[str] = mapped_column(String(20))  # "stopping" or "crashed"
    reason: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(20))  # "queued" (re-run) or "failed"
    retries_left: Mapped[int] = mapped_column(Integer)
    released_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Worker(Base):
    """A worker that asked for work at least once."""

    __tablename__ = "hps_workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str | None] = mapped_column(String(255), default=None)
    first_seen: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    trials_finished: Mapped[int] = mapped_column(Integer, default=0)


class ApiToken(Base):
    """An API token. Only its SHA-256 is kept: the secret is shown once, when it is created.
    Tokens are 256-bit random strings, so a plain hash is enough (no salt or slow hash: nothing
    could be guessed by trying)."""

    __tablename__ = "hps_tokens"

    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(8))  # "user" or "worker"
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The token's first characters, so that a listing can tell tokens apart.
    hint: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
