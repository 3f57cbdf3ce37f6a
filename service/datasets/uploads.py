"""A multipart upload, streamed to a file as it arrives: hashed and counted on the way, refused
(413) as soon as it passes the size limit, never held in memory.

The file is written under ``<artifacts>/incoming/``; the caller moves it into the content-addressed
store (``service.datasets.service``) once its checks pass, or deletes it. A crash mid-upload
leaves only an
``incoming`` file, which the reaper sweeps away once it has been idle long enough.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from service.errors import FieldError, InvalidSpecError

if TYPE_CHECKING:  # a typing-only name in python-multipart
    from python_multipart.multipart import MultipartCallbacks

# Room for the multipart framing and the small text fields beside the file.
_FRAMING_BYTES = 64 * 1024
_MAX_FIELD_BYTES = 1024
_MAX_PARTS = 8
_MAX_PART_HEADER_BYTES = 16 * 1024  # a part's headers (its name, file name, type), together


class UploadTooLargeError(ValueError):
    """The file passes the configured size limit (answered 413)."""


class StorageFullError(OSError):
    """No room left for the upload in the artifact directory (answered 507)."""


@dataclass
class Upload:
    """A received file (still in ``incoming/``) and the text fields sent with it."""

    path: Path
    filename: str
    sha256: str
    size: int
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        """Delete the received file."""
        self.path.unlink(missing_ok=True)


class _Receiver:
    """python-multipart callbacks: the ``file_field`` part to a file, other parts to memory."""

    def __init__(self, incoming: Path, file_field: str, max_bytes: int) -> None:
        self.incoming, self.file_field, self.max_bytes = incoming, file_field, max_bytes
        self.fields: dict[str, str] = {}
        self.upload: Upload | None = None
        self._file: Any = None
        self._hash = hashlib.sha256()
        self._headers: dict[bytes, bytes] = {}
        self._header_name = self._header_value = b""
        self._part_name: str | None = None
        self._buffer = bytearray()
        self._parts = 0
        self._header_bytes = 0

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > _MAX_PARTS:
            raise InvalidSpecError([FieldError("(body)", f"at most {_MAX_PARTS} form fields")])
        self._headers, self._part_name, self._buffer = {}, None, bytearray()
        self._header_bytes = 0

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > _MAX_PART_HEADER_BYTES:
            raise InvalidSpecError(
                [
                    FieldError(
                        "(body)", f"a part's headers take at most {_MAX_PART_HEADER_BYTES} bytes"
                    )
                ]
            )

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        self._part_name = name
        if name != self.file_field:
            return
        if self.upload is not None:
            raise InvalidSpecError([FieldError(name, "send one file per upload")])
        filename = params.get(b"filename", b"").decode("utf-8", "replace")
        fd, temp = tempfile.mkstemp(dir=self.incoming, suffix=".part")
        self._file = os.fdopen(fd, "wb")
        self.upload = Upload(Path(temp), os.path.basename(filename), "", 0)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._part_name == self.file_field and self.upload is not None:
            self.upload.size += len(chunk)
            if self.upload.size > self.max_bytes:
                raise UploadTooLargeError(self.upload.size)
            self._hash.update(chunk)
            self._file.write(chunk)
            return
        self._buffer += chunk
        if len(self._buffer) > _MAX_FIELD_BYTES:
            raise InvalidSpecError(
                [FieldError(self._part_name or "(body)", f"at most {_MAX_FIELD_BYTES} bytes")]
            )

    def _part_end(self) -> None:
        if self._part_name == self.file_field and self._file is not None:
            self.finish_file()
        elif self._part_name:
            self.fields[self._part_name] = self._buffer.decode("utf-8", "replace").strip()

    def finish_file(self) -> None:
        """Flush the file to disk (it is about to be read, and perhaps kept)."""
        if self._file is None or self.upload is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self.upload.sha256 = self._hash.hexdigest()

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.upload is not None:
            self.upload.discard()


async def receive_upload(
    request: Request, incoming: Path, max_bytes: int, file_field: str = "file"
) -> Upload:
    """Stream ``request``'s multipart body: the ``file_field`` part into ``incoming``.

    Raises ``UploadTooLargeError`` past ``max_bytes`` (from ``Content-Length`` before reading
    anything, else while streaming) and ``InvalidSpecError`` for a malformed request; in every
    failure the partial file is deleted.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidSpecError(
            [
                FieldError(
                    "(body)",
                    f"must be multipart/form-data with a {file_field!r} part "
                    f"(curl -F {file_field}=@data.npz ...)",
                )
            ]
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + _FRAMING_BYTES:
        raise UploadTooLargeError(int(declared))
    incoming.mkdir(parents=True, exist_ok=True)
    receiver = _Receiver(incoming, file_field, max_bytes)
    parser = MultipartParser(boundary, receiver.callbacks())
    try:
        async for chunk in request.stream():
            if chunk:
                # File writes and hashing off the event loop: the protocol's requests go on.
                await run_in_threadpool(parser.write, chunk)
        await run_in_threadpool(parser.finalize)
        await run_in_threadpool(receiver.finish_file)
    except (UploadTooLargeError, InvalidSpecError, ClientDisconnect):
        receiver.abort()
        raise
    except OSError as exc:
        receiver.abort()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFullError(exc.errno, f"no space left in {incoming}") from None
        raise
    except Exception as exc:  # a malformed body (python-multipart's errors)
        receiver.abort()
        raise InvalidSpecError([FieldError("(body)", f"malformed multipart body: {exc}")]) from None
    if receiver.upload is None:
        raise InvalidSpecError([FieldError(file_field, "no file sent in this field")])
    receiver.upload.fields = receiver.fields
    return receiver.upload
