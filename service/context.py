"""What every use case needs: settings, the database engine and sessions. One per process;
it holds no study state (two API processes on one database serve the same workers)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.clock import Clock, SystemClock
from service.config import Settings
from service.db.session import make_engine, make_sessionmaker


@dataclass(frozen=True)
class ServiceContext:
    """Settings plus the engine and session factory built from them, and the clock every use
    case reads the time from."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    clock: Clock = field(default_factory=SystemClock)

    @property
    def url(self) -> str:
        """The database URL (also Optuna's storage URL)."""
        return self.settings.url

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock | None = None) -> ServiceContext:
        """Build the engine for ``settings``' database."""
        engine = make_engine(settings.url)
        return cls(settings, engine, make_sessionmaker(engine), clock or SystemClock())
