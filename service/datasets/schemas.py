"""The datasets' answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from hpsearch.lifecycle import StudyStatus
from service.schemas import PageInfo, UtcTimestamp


class DatasetPublic(BaseModel):
    """An uploaded dataset: its file and what the service read off it."""

    id: str
    name: str
    sha256: str = Field(description="the file's content hash (its id is derived from it)")
    format: Literal["npz", "csv"]
    label_column: str | None = Field(description="csv only")
    size_bytes: int
    shapes: dict[str, list[int]] = Field(description="each array's shape (x_train, y_train, ...)")
    classes: int
    class_names: list[str] | None
    class_counts: list[int]
    features: list[str] | None = Field(description="csv only: the feature columns")
    downloads: int = Field(description="times a worker fetched it")
    created_at: UtcTimestamp


class DatasetStudy(BaseModel):
    """A study that trains on the dataset."""

    id: int
    name: str
    status: StudyStatus


class DatasetDetail(DatasetPublic):
    """One dataset, with the studies that train on it."""

    studies: list[DatasetStudy]


class DatasetsPage(PageInfo):
    """A page of datasets, newest first, and the largest upload the service takes."""

    data: list[DatasetPublic]
    max_upload_bytes: int
