"""Service settings, read from ``HPSEARCH_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    max_classes: int = Field(1_000, ge=2, description="uploaded labels lie in [0, max_classes)")
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
    log_level: str = "INFO"
    log_format: str = Field("json", pattern="^(json|text)$")

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
