"""Uploaded datasets: checked before they are stored, stored by content, served to workers.

The artifact directory holds ``datasets/<sha256[:2]>/<sha256>.<npz|csv>`` (content-addressed:
a file's name is its hash, so a file is never rewritten with other bytes) and ``incoming/``
(uploads in flight). A file enters the store by an atomic rename of a complete, fsynced file;
its database row is written after it, so a row never names a missing or partial file. A
dataset's id derives from its content and label column: uploading the same file again finds
the dataset already there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hpsearch.datafiles import Fields, FileFormat, check_file, file_format
from hpsearch.lifecycle import ACTIVE_STUDY_STATUSES, TrialStatus
from hpsearch.protocol import DatasetFile
from service.context import ServiceContext
from service.datasets.uploads import Upload
from service.db.models import Dataset, Study, Trial
from service.db.session import unit_of_work
from service.errors import ConflictError, FieldError, InvalidSpecError, NotFoundError

log = logging.getLogger(__name__)

_UPLOAD_FIELDS = Fields(file="file", label_column="label_column")
# One upload's checks at a time per process: they stream the file with bounded memory
# (hpsearch.datafiles.check_file), so that the API's memory stays bounded however many arrive.
_CHECKS = threading.Semaphore(1)
# The dataset table's text columns (name, label_column) hold at most this many characters; a
# SQL_ASCII PostgreSQL database counts bytes, so the bound is on UTF-8 bytes.
MAX_TEXT_BYTES = 200


def store_dir(ctx: ServiceContext) -> Path:
    """Where the content-addressed files live."""
    return ctx.settings.artifacts / "datasets"


def incoming_dir(ctx: ServiceContext) -> Path:
    """Where uploads are received before their checks."""
    return ctx.settings.artifacts / "incoming"


def _blob(ctx: ServiceContext, sha256: str, fmt: str) -> Path:
    return store_dir(ctx) / sha256[:2] / f"{sha256}.{fmt}"


def dataset_id(sha256: str, label_column: str | None) -> str:
    """``ds_`` and 16 hex digits: the same file (and label column) always gets the same id."""
    key = f"{sha256}\n{label_column or ''}".encode()
    return "ds_" + hashlib.sha256(key).hexdigest()[:16]


@contextlib.contextmanager
def _store_lock(ctx: ServiceContext) -> Iterator[None]:
    """Serializes adding and removing files across the API processes of one machine (a delete
    must not remove a file that an upload of the same content is adding back)."""
    store_dir(ctx).mkdir(parents=True, exist_ok=True)
    with (store_dir(ctx) / ".lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _public(d: Dataset) -> dict[str, Any]:
    return {
        "id": d.id,
        "name": d.name,
        "sha256": d.sha256,
        "format": d.format,
        "label_column": d.label_column,
        "size_bytes": d.size_bytes,
        **d.summary,
        "downloads": d.downloads,
        "created_at": d.created_at.isoformat(),
    }


def store_upload(ctx: ServiceContext, upload: Upload) -> tuple[dict[str, Any], bool]:
    """Check an upload and keep it; returns the dataset and whether it is new.

    Raises ``InvalidSpecError`` naming the field (``file``, ``name``, ``label_column``,
    ``format``) and the reason; the upload is then deleted and nothing is stored.
    """
    try:
        fmt, name, label_column = _form(upload)
        ident = dataset_id(upload.sha256, label_column)
        with ctx.sessions() as s:
            existing = s.get(Dataset, ident)
            known = existing is not None and _blob(ctx, existing.sha256, existing.format).is_file()
        if known:  # the same bytes, read the same way, passed these checks before
            return get_dataset(ctx, ident), False
        with _CHECKS:
            summary = check_file(
                upload.path,
                fmt,
                label_column or "label",
                _UPLOAD_FIELDS,
                ctx.settings.max_dataset_array_bytes,
                ctx.settings.max_classes,
                shown_name=upload.filename or f"the {fmt} file",
            )
        with _store_lock(ctx):
            target = _blob(ctx, upload.sha256, fmt)
            target.parent.mkdir(parents=True, exist_ok=True)
            existed = target.is_file()
            os.replace(upload.path, target)  # complete and fsynced: atomic, all or nothing
            _fsync_dir(target.parent)
            os.utime(target)  # fresh: the sweep spares it until its row is written
            try:
                created = _add_row(ctx, ident, name, upload, fmt, label_column, summary)
            except Exception:
                # No row names the file we just added: it goes now, not at the next sweep.
                if not existed:
                    target.unlink(missing_ok=True)
                    _fsync_dir(target.parent)
                    log.warning("dataset not recorded: its file removed", extra={"dataset": ident})
                raise
    finally:
        upload.discard()
    log.info(
        "dataset stored" if created else "dataset already stored",
        extra={
            "dataset": ident,
            "dataset_name": name,
            "bytes": upload.size,
            "sha256": upload.sha256,
        },
    )
    return get_dataset(ctx, ident), created


def _add_row(
    ctx: ServiceContext,
    ident: str,
    name: str,
    upload: Upload,
    fmt: str,
    label_column: str | None,
    summary: dict[str, Any],
) -> bool:
    """Write the dataset's row (its file is in the store); whether it is new."""
    try:
        with unit_of_work(ctx.sessions) as s:
            if s.get(Dataset, ident) is not None:  # its file had gone missing: it is back
                return False
            s.add(
                Dataset(
                    id=ident,
                    name=name,
                    sha256=upload.sha256,
                    format=fmt,
                    label_column=label_column,
                    size_bytes=upload.size,
                    summary=summary,
                    created_at=ctx.clock.now(),
                )
            )
            return True
    except IntegrityError:  # the same file, uploaded at the same moment by another?
        with ctx.sessions() as s:
            if s.get(Dataset, ident) is None:  # no: another refusal
                raise
        return False


def _form(upload: Upload) -> tuple[FileFormat, str, str | None]:
    """The upload's format, name and label column, from its form fields and file name."""
    errors = []
    given = upload.fields.get("format")
    fmt = given.lower() if given else file_format(upload.filename)
    if fmt not in ("npz", "csv"):
        if given:
            errors.append(FieldError("format", f"must be npz or csv, got {given!r}"))
        else:
            errors.append(
                FieldError(
                    "file",
                    f"must be a .npz or .csv file, got {upload.filename or 'no file name'!r} "
                    "(or say which with the field format=npz|csv)",
                )
            )
    name = upload.fields.get("name") or _name_from(upload.filename)
    label_column = upload.fields.get("label_column") or None
    for field_name, value in (("name", name), ("label_column", label_column)):
        problem = _text_problem(value)
        if problem:
            errors.append(FieldError(field_name, problem))
    if fmt == "npz" and label_column is not None:
        errors.append(FieldError("label_column", "only for csv files (.npz files hold y_train)"))
    if fmt == "csv":
        label_column = label_column or "label"
    unknown = sorted(set(upload.fields) - {"name", "label_column", "format"})
    errors += [
        FieldError(u, "unknown field; known: file, name, label_column, format") for u in unknown
    ]
    if errors:
        raise InvalidSpecError(errors)
    return "csv" if fmt == "csv" else "npz", name, label_column


def _text_problem(value: str | None) -> str | None:
    """Why ``value`` does not fit a text column of the dataset table; ``None`` when it does."""
    if value is None:
        return None
    size = len(value.encode())
    if size > MAX_TEXT_BYTES:
        return f"must be at most {MAX_TEXT_BYTES} bytes (UTF-8), got {size:,}"
    if not value.isprintable():
        return "must be printable characters (no control characters)"
    return None


def _name_from(filename: str) -> str:
    """A dataset's name when none is given: its file's, cut to fit, without control characters."""
    stem = "".join(c if c.isprintable() else "_" for c in Path(filename).stem)
    return stem.encode()[:MAX_TEXT_BYTES].decode("utf-8", "ignore") or "dataset"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_datasets(ctx: ServiceContext, offset: int, limit: int) -> dict[str, Any]:
    """Uploaded datasets, newest first: ``{data, count, offset, limit}``."""
    with ctx.sessions() as s:
        count = s.scalar(select(func.count()).select_from(Dataset)) or 0
        rows = s.scalars(
            select(Dataset)
            .order_by(Dataset.created_at.desc(), Dataset.id)
            .offset(offset)
            .limit(limit)
        )
        return {
            "data": [_public(d) for d in rows],
            "count": count,
            "offset": offset,
            "limit": limit,
        }


def get_dataset(ctx: ServiceContext, ident: str) -> dict[str, Any]:
    """One dataset, with the studies that train on it."""
    with ctx.sessions() as s:
        d = _dataset(s, ident)
        studies = s.execute(
            select(Study.id, Study.name, Study.status)
            .where(Study.dataset_id == ident)
            .order_by(Study.id)
        ).all()
        return {
            **_public(d),
            "studies": [{"id": i, "name": n, "status": st} for i, n, st in studies],
        }


def _dataset(s: Session, ident: str) -> Dataset:
    d = s.get(Dataset, ident)
    if d is None:
        raise NotFoundError(f"no dataset with id {ident!r}")
    return d


def delete_dataset(ctx: ServiceContext, ident: str) -> None:
    """Delete a dataset (and its file, unless another dataset shares it). 409 while a queued or
    running study trains on it; finished studies keep their results."""
    with _store_lock(ctx):
        with unit_of_work(ctx.sessions) as s:
            d = _dataset(s, ident)
            using = s.execute(
                select(Study.id, Study.name)
                .where(Study.dataset_id == ident, Study.status.in_(ACTIVE_STUDY_STATUSES))
                .limit(5)
            ).all()
            if using:
                names = ", ".join(f"{n!r} (id {i})" for i, n in using)
                raise ConflictError(
                    f"dataset {ident} is used by the active study {names}; stop it first"
                )
            sha256, fmt = d.sha256, d.format
            s.delete(d)
        with ctx.sessions() as s:
            shared = s.scalar(select(Dataset.id).where(Dataset.sha256 == sha256).limit(1))
        if shared is None:
            _blob(ctx, sha256, fmt).unlink(missing_ok=True)
    log.info("dataset deleted", extra={"dataset": ident})


def content(
    ctx: ServiceContext, ident: str, worker: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """The file a worker downloads, counted as one download; 404 when it is gone.

    ``worker``: the name of the worker token asking. A worker token reaches a dataset only while
    a trial that trains on it is leased (running, lease not expired); otherwise 404, as for a
    dataset that does not exist: the token learns nothing of the datasets it may not read, and a
    worker whose lease ran out fails that trial rather than taking the answer as its token
    refused (401/403 stop a worker).
    """
    with unit_of_work(ctx.sessions) as s:
        d = s.get(Dataset, ident)
        if worker is not None and (d is None or not _leased(s, ident, ctx.clock.now())):
            log.warning(
                "dataset refused to a worker token: no leased trial trains on it",
                extra={"dataset": ident, "token_name": worker},
            )
            raise NotFoundError(
                f"no trial leased now trains on dataset {ident}: a worker token fetches only "
                "the datasets of the trials leased to workers"
            )
        d = _dataset(s, ident)
        path = _blob(ctx, d.sha256, d.format)
        if not path.is_file():
            log.error(
                "dataset file missing from the store", extra={"dataset": ident, "path": str(path)}
            )
            raise NotFoundError(
                f"the file of dataset {ident} is missing from the artifact directory; "
                "upload it again"
            )
        s.execute(
            update(Dataset).where(Dataset.id == ident).values(downloads=Dataset.downloads + 1)
        )
        return path, _public(d)


def _leased(s: Session, ident: str, now: datetime) -> bool:
    """Whether a running trial with a live lease trains on dataset ``ident``."""
    leased = (
        select(Trial.id)
        .join(Study, Study.id == Trial.study_id)
        .where(
            Study.dataset_id == ident,
            Trial.state == TrialStatus.RUNNING,
            Trial.worker_id.is_not(None),
            Trial.lease_expires_at > now,
        )
        .limit(1)
    )
    return s.scalar(leased) is not None


_FILES: dict[str, DatasetFile] = {}
_FILES_LOCK = threading.Lock()


def dataset_file(ctx: ServiceContext, ident: str) -> DatasetFile | None:
    """What a worker needs to fetch dataset ``ident`` (cached: a dataset never changes, and a
    deleted one's content answers 404); ``None`` when it does not exist."""
    with _FILES_LOCK:
        known = _FILES.get(ident)
    if known is not None:
        return known
    with ctx.sessions() as s:
        d = s.get(Dataset, ident)
        if d is None:
            return None
        found = DatasetFile(
            id=d.id,
            sha256=d.sha256,
            size_bytes=d.size_bytes,
            format=d.format,
            label_column=d.label_column,
            content_path=f"/api/v1/datasets/{d.id}/content",
        )
    with _FILES_LOCK:
        _FILES[ident] = found
    return found


def example_shape(ctx: ServiceContext, ident: str) -> tuple[tuple[int, ...], int] | None:
    """(one example's shape, classes) of dataset ``ident``; ``None`` when it is not stored."""
    with ctx.sessions() as s:
        d = s.get(Dataset, ident)
        if d is None:
            return None
        return tuple(d.summary["shapes"]["x_train"][1:]), int(d.summary["classes"])


def exists(ctx: ServiceContext, ident: str) -> bool:
    """Whether dataset ``ident`` is stored."""
    with ctx.sessions() as s:
        return s.get(Dataset, ident) is not None


def sweep(ctx: ServiceContext) -> None:
    """Delete what crashes left behind: uploads idle past ``upload_stale_seconds``, and stored
    files that no dataset names (a crash between the rename and the row) after the same delay."""
    now = ctx.clock.now().replace(tzinfo=UTC).timestamp()  # file times are POSIX seconds
    stale = now - ctx.settings.upload_stale_seconds
    incoming = incoming_dir(ctx)
    if incoming.is_dir():
        for path in incoming.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < stale:
                    path.unlink()
                    log.info("unfinished upload swept away", extra={"path": path.name})
    store = store_dir(ctx)
    if not store.is_dir():
        return
    with _store_lock(ctx):
        with ctx.sessions() as s:
            known = set(s.scalars(select(Dataset.sha256)))
        for path in store.glob("*/*.*"):
            sha256 = path.name.split(".", 1)[0]
            with contextlib.suppress(FileNotFoundError):
                if sha256 not in known and path.stat().st_mtime < stale:
                    path.unlink()
                    log.info("unreferenced dataset file swept away", extra={"path": path.name})
