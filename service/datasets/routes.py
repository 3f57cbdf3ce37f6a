"""The datasets' routes: upload (streamed and checked as it arrives), list, read, delete, and
the content that workers fetch."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from hpsearch.datasets import DATASET_ID_PATTERN
from service.api.auth import UserOrWorkerDep
from service.api.deps import (
    ContextDep,
    Page,
    page,
)
from service.api.errors import refusal
from service.datasets import service as datasets
from service.datasets.schemas import DatasetDetail, DatasetPublic, DatasetsPage
from service.datasets.uploads import receive_upload
from service.schemas import ErrorBody

log = logging.getLogger(__name__)

datasets_router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])
# Users read their datasets back; workers fetch the ones their trials name.
dataset_content_router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])


DatasetIdPath = Annotated[
    str, Path(pattern=DATASET_ID_PATTERN, description="e.g. ds_0123456789abcdef")
]
_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": ".npz (x_train, y_train, optional x_val, y_val, x_test, "
                        "y_test) or .csv (numeric or text features and a label column)",
                    },
                    "name": {
                        "type": "string",
                        "maxLength": 200,
                        "description": "at most 200 bytes (UTF-8); default: the file's name",
                    },
                    "label_column": {
                        "type": "string",
                        "maxLength": 200,
                        "description": "csv: default 'label'; at most 200 bytes (UTF-8)",
                    },
                    "format": {"type": "string", "enum": ["npz", "csv"]},
                },
            }
        }
    },
}


@datasets_router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={
        200: {
            "model": DatasetPublic,
            "description": "the same file was uploaded before: that dataset",
        },
        413: {"model": ErrorBody, "description": "the file passes the configured size limit"},
        422: {"model": ErrorBody, "description": "the file fails a check; nothing is stored"},
    },
)
async def upload_dataset(request: Request, ctx: ContextDep) -> JSONResponse:
    """Upload a dataset (multipart field ``file``). Checked before it is stored: numeric arrays
    only (no pickle), shapes that agree, integer labels in range, no NaN or inf. Answers its id,
    name, SHA-256, shapes, classes and size."""
    try:
        upload = await receive_upload(
            request, datasets.incoming_dir(ctx), ctx.settings.max_upload_bytes
        )
    except ClientDisconnect:  # the partial file is gone already
        stalled = request.scope.get("state", {}).get("body_stalled")
        if stalled is not None:
            log.warning("upload stalled: dropped", extra={"seconds": stalled})
            reason = (
                f"no data for {stalled:g} s (HPSEARCH_REQUEST_BODY_SECONDS); nothing was stored"
            )
            return refusal(408, reason, field="file", headers={"Connection": "close"})
        log.info("upload abandoned by the client")  # nobody is left to answer
        return refusal(400, "upload abandoned")
    dataset, created = await run_in_threadpool(datasets.store_upload, ctx, upload)
    return JSONResponse(dataset, status_code=201 if created else 200)


@datasets_router.get("", response_model=DatasetsPage)
def list_datasets(ctx: ContextDep, rows: Annotated[Page, page(50)]) -> dict[str, Any]:
    """Uploaded datasets, newest first: ``{data, count, offset, limit, max_upload_bytes}``."""
    return {
        **datasets.list_datasets(ctx, rows.offset, rows.limit),
        "max_upload_bytes": ctx.settings.max_upload_bytes,
    }


@datasets_router.get("/{dataset_id}", response_model=DatasetDetail)
def get_dataset(ctx: ContextDep, dataset_id: DatasetIdPath) -> dict[str, Any]:
    """One dataset, with the studies that train on it."""
    return datasets.get_dataset(ctx, dataset_id)


@datasets_router.delete("/{dataset_id}", status_code=204)
def delete_dataset(ctx: ContextDep, dataset_id: DatasetIdPath) -> Response:
    """Delete a dataset; 409 while a queued or running study uses it."""
    datasets.delete_dataset(ctx, dataset_id)
    return Response(status_code=204)


@dataset_content_router.get(
    "/{dataset_id}/content",
    response_class=FileResponse,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "text/csv": {"schema": {"type": "string"}},
            },
            "description": "the file, as uploaded",
        }
    },
)
def dataset_content(
    ctx: ContextDep, dataset_id: DatasetIdPath, caller: UserOrWorkerDep
) -> FileResponse:
    """The dataset's file, as uploaded (for workers); ``X-Content-SHA256`` is its hash. A worker
    token reaches it only while a trial that trains on it is leased (404 otherwise)."""
    worker = caller.name if caller is not None and caller.kind == "worker" else None
    path, d = datasets.content(ctx, dataset_id, worker)
    return FileResponse(
        path,
        media_type="text/csv" if d["format"] == "csv" else "application/octet-stream",
        filename=f"{d['id']}.{d['format']}",
        headers={
            "X-Content-SHA256": d["sha256"],
            "ETag": f'"{d["sha256"]}"',
            "Cache-Control": "private, max-age=31536000, immutable",
        },
    )
