"""Service settings, read from ``HPSEARCH_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from hpsearch.datafiles import CLASS_CEILING
from hpsearch.protocol import (
    DEFAULT_STOP_GRACE_SECONDS,
    MAX_STOP_GRACE_SECONDS,
    RELEASE_SECONDS,
)

# What a stopping worker needs after its stop grace: stop its trial process (well under a
# second) and hand the trial back (at most RELEASE_SECONDS), with half a second to spare.
DRAIN_MARGIN_SECONDS = RELEASE_SECONDS + 0.5


class Settings(BaseSettings):
    """Safe defaults for one machine: SQLite under ``./data``; PostgreSQL by URL for many."""

    model_config = SettingsConfigDict(env_prefix="HPSEARCH_", extra="ignore")

    data_dir: Path = Field(
        Path("data"), description="where the SQLite database and the artifacts live"
    )
    artifacts_dir: Path | None = Field(
        None, description="uploaded datasets; default <data_dir>/artifacts"
    )
    max_upload_bytes: int = Field(
        1 << 30, ge=1, description="the largest dataset file accepted (413 past it)"
    )
    max_dataset_array_bytes: int = Field(
        4 << 30, ge=1, description="an uploaded .npz's arrays, decompressed, in memory"
    )
    max_classes: int = Field(
        1_000, ge=2, le=CLASS_CEILING, description="uploaded labels lie in [0, max_classes)"
    )
    upload_stale_seconds: float = Field(
        900.0, gt=0, description="an unfinished upload idle this long is swept away"
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/hpsearch.db"
    )
    lease_seconds: float = Field(30.0, gt=0, description="a trial's lease without heartbeat")
    max_retries: int = Field(2, ge=0, description="re-runs of a trial whose worker was lost")
    max_trials: int = Field(10_000, ge=1, description="the largest n_trials a study may ask")
    max_epochs: int = Field(1_000, ge=1)
    reaper_seconds: float = Field(2.0, gt=0, description="how often leases and syncs are checked")
    idle_retry_seconds: float = Field(1.0, gt=0, description="Retry-After when there is no work")
    auto_migrate: bool = Field(True, description="upgrade the schema when the API starts")
    database_wait_seconds: float = Field(
        60.0, ge=0, description="how long the API and migrate wait for the database at start"
    )
    # -- exposure (see the README's "Security") ---------------------------------------------------
    auth: bool = Field(
        False,
        description="on: every endpoint but /healthz needs a token (Authorization: Bearer)",
    )
    allow_no_auth: bool = Field(
        False,
        description="answer on non-loopback addresses with auth off (a trusted network only)",
    )
    worker_token: SecretStr | None = Field(
        None,
        min_length=32,
        description="a worker token registered (hashed) when the API starts: a deployment hands "
        "this one secret to all its workers",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="origins allowed cross-site calls; none by default"
    )
    max_request_bytes: int = Field(
        1 << 20, ge=1024, description="the largest JSON body (uploads have their own limit)"
    )
    request_body_seconds: float = Field(
        60.0, gt=0, description="a request body must arrive within this (uploads: per chunk)"
    )
    max_page_size: int = Field(1_000, ge=1, description="the largest `limit` of a list")
    max_active_studies: int = Field(
        50, ge=1, description="studies queued or running at once; more answer 409"
    )
    max_model_params: int = Field(
        50_000_000, ge=1_000, description="weights of a trial's model, counted before it runs"
    )
    user_request_slots: int = Field(
        16,
        ge=1,
        description="user requests handled at once per API process; the worker protocol never "
        "waits behind them",
    )
    # -- hpsearch serve: its local workers and its shutdown (see the README's "Stop and restart") -
    drain_seconds: float = Field(
        8.0,
        gt=0,
        le=3600,
        description="after SIGTERM, the longest `hpsearch serve` keeps answering its workers' "
        "reports before it exits (under compose's 10 s and Kubernetes' 30 s stop timeouts)",
    )
    worker_stop_grace: float = Field(
        DEFAULT_STOP_GRACE_SECONDS,
        ge=0,
        le=MAX_STOP_GRACE_SECONDS,
        description="what a stopping worker gives its trial to finish before it hands the "
        "trial back (HPSEARCH_WORKER_STOP_GRACE, read by the workers too)",
    )
    worker_restart_seconds: float = Field(
        1.0, gt=0, le=3600, description="the first wait before a dead local worker is restarted"
    )
    worker_restart_max_seconds: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="the longest wait between restarts (the wait doubles up to it; a worker "
        "that ran this long starts again from worker_restart_seconds)",
    )
    local_token_stale_seconds: float = Field(
        3600.0,
        ge=60,
        description="a local worker token of another `serve` unused this long is revoked (its "
        "serve crashed); a live serve's workers use theirs every few seconds",
    )
    log_level: str = "INFO"
    log_format: str = Field("json", pattern="^(json|text)$")

    def drain_problem(self) -> str | None:
        """Why ``hpsearch serve`` cannot drain with these settings, or ``None``: a worker gives
        its trial the stop grace, then hands it back, and serve must still be answering by
        then, or the trial waits out its lease. (Checked by serve alone: no other command
        drains.)"""
        if self.drain_seconds < self.worker_stop_grace + DRAIN_MARGIN_SECONDS:
            return (
                f"HPSEARCH_DRAIN_SECONDS ({self.drain_seconds:g}) must be at least "
                f"HPSEARCH_WORKER_STOP_GRACE ({self.worker_stop_grace:g}) + "
                f"{DRAIN_MARGIN_SECONDS:g} s, the time a stopping worker needs to hand its "
                "trial back"
            )
        return None

    @property
    def artifacts(self) -> Path:
        """The artifact directory in force."""
        return (self.artifacts_dir or self.data_dir / "artifacts").resolve()

    @property
    def url(self) -> str:
        """The database URL in force."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir.resolve() / 'hpsearch.db'}"


@lru_cache
def get_settings() -> Settings:
    """The process's settings (read once)."""
    return Settings()
