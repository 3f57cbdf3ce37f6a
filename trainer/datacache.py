"""The worker's cache of uploaded datasets: fetched once, checked by SHA-256, reused.

Files are kept as ``<directory>/<sha256>.<npz|csv>``, so a dataset is reused across trials,
studies and worker restarts, and workers sharing a directory on one machine share their
downloads (a lock per file makes the second wait for the first rather than fetch it again). A
file is checked against its hash when it is downloaded and again the first time each worker
process uses it, or whenever it changed on disk since; a file that fails the check is fetched
again. Downloads land in a ``.part`` file renamed into place once complete and checked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hpsearch.client import ContentGoneError
from hpsearch.protocol import DatasetFile

log = logging.getLogger(__name__)

_READ_CHUNK = 1 << 20
# Whole downloads retried after a truncated or corrupt transfer.
_DOWNLOAD_ATTEMPTS = 3

# ``fetch(content_path)`` yields the bytes of a dataset's content (``Client.stream``).
Fetch = Callable[[str], Iterator[bytes]]


def default_cache_dir() -> Path:
    """``$HPSEARCH_DATASET_CACHE``, else ``$XDG_CACHE_HOME/hpsearch/datasets``, else
    ``~/.cache/hpsearch/datasets``."""
    explicit = os.environ.get("HPSEARCH_DATASET_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hpsearch" / "datasets"


class DatasetFetchError(RuntimeError):
    """The dataset could not be fetched intact (its trial fails with this reason)."""


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class DatasetCache:
    """Local copies of uploaded datasets, keyed by their SHA-256. One per worker."""

    def __init__(self, directory: Path, fetch: Fetch) -> None:
        self.directory = directory
        self._fetch = fetch
        self.downloads = 0  # files fetched by this process
        # Files checked by this process: hash -> (size, mtime, inode) when it was checked.
        self._checked: dict[str, tuple[int, int, int]] = {}

    def path(self, file: DatasetFile, log_fields: dict[str, Any] | None = None) -> Path:
        """The local copy of ``file``, fetched first unless an intact copy is there;
        ``log_fields`` (study, trial) go into its log lines."""
        fields = {"dataset": file.id, **(log_fields or {})}
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / f"{file.sha256}.{file.format}"
        with self._lock(file.sha256):
            if target.is_file():
                if self._intact(target, file.sha256):
                    return target
                log.warning(
                    "cached dataset is corrupt: fetching it again",
                    extra={**fields, "path": str(target)},
                )
                target.unlink()
            self._download(file, target, fields)
        return target

    @contextlib.contextmanager
    def _lock(self, sha256: str) -> Iterator[None]:
        with (self.directory / f"{sha256}.lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _intact(self, path: Path, sha256: str) -> bool:
        st = path.stat()
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._checked.get(sha256) == key:
            return True
        if file_sha256(path) != sha256:
            self._checked.pop(sha256, None)
            return False
        self._checked[sha256] = key
        return True

    def _download(self, file: DatasetFile, target: Path, fields: dict[str, Any]) -> None:
        problem = ""
        for attempt in range(1, _DOWNLOAD_ATTEMPTS + 1):
            started = time.monotonic()
            fd, temp = tempfile.mkstemp(
                dir=self.directory, prefix=f"{file.sha256}.", suffix=".part"
            )
            try:
                digest, size = hashlib.sha256(), 0
                with os.fdopen(fd, "wb") as out:
                    for chunk in self._fetch(file.content_path):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if size == file.size_bytes and digest.hexdigest() == file.sha256:
                    os.replace(temp, target)
                    st = target.stat()
                    self._checked[file.sha256] = (st.st_size, st.st_mtime_ns, st.st_ino)
                    self.downloads += 1
                    log.info(
                        "dataset downloaded",
                        extra={
                            **fields,
                            "bytes": size,
                            "seconds": round(time.monotonic() - started, 3),
                            "sha256": file.sha256,
                        },
                    )
                    return
                problem = (
                    f"got {size} bytes hashing to {digest.hexdigest()[:12]}..., expected "
                    f"{file.size_bytes} bytes hashing to {file.sha256[:12]}..."
                )
            except DatasetFetchError:
                raise
            except ContentGoneError as exc:  # a 404: deleted meanwhile, no use trying again
                raise DatasetFetchError(exc.message) from exc
            except OSError as exc:  # a full disk, or a transfer cut short (httpx errors)
                problem = f"{type(exc).__name__}: {exc}"
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            log.warning(
                "dataset download failed",
                extra={**fields, "attempt": attempt, "problem": problem},
            )
        raise DatasetFetchError(
            f"dataset {file.id} could not be fetched intact after "
            f"{_DOWNLOAD_ATTEMPTS} attempts: {problem}"
        )
