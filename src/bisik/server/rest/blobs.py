"""Attachment blobs over HTTP: create, upload parts (raw bodies), status, download, delete."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bisik.proto import BlobCreate, BlobStatus, BlobUsage, Done, ErrorCode, ProtocolError
from bisik.server.rest._util import ApiRoute, authenticated, endpoint, read_body
from bisik.server.rest._util import services as svc

_BLOB_ID = re.compile(r"[A-Za-z0-9_-]{43}")
_RANGE = re.compile(r"bytes=(\d{1,19})-")
_DIGITS = re.compile(r"\d{1,19}")


def _blob_id(request: Request) -> str:
    blob_id = request.path_params["blob_id"]
    if not isinstance(blob_id, str) or not _BLOB_ID.fullmatch(blob_id):
        raise ProtocolError(ErrorCode.BLOB_NOT_FOUND, "no such blob")
    return blob_id


async def _body(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "upload interrupted") from None


@endpoint
async def create_blob(request: Request) -> BlobStatus:
    """Start a resumable upload of an encrypted attachment (size in bytes)."""
    device = await authenticated(request)
    req = await read_body(request, BlobCreate)
    return await svc(request).blobs.create(device, req)


@endpoint
async def blob_usage(request: Request) -> BlobUsage:
    """How many bytes of attachments the account stores, and its limits."""
    device = await authenticated(request)
    return await svc(request).blobs.usage(device)


@endpoint
async def blob_status(request: Request) -> BlobStatus:
    """An upload's progress (``received``): where to resume."""
    device = await authenticated(request)
    return await svc(request).blobs.status(device, _blob_id(request))


@endpoint
async def put_part(request: Request) -> BlobStatus:
    """Upload the part at ``?offset=N`` as a raw body of ``part_size`` bytes."""
    device = await authenticated(request)
    blob_id = _blob_id(request)
    offset = request.query_params.get("offset", "")
    length = request.headers.get("content-length", "")
    if not _DIGITS.fullmatch(offset):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "?offset=N is required")
    if not _DIGITS.fullmatch(length):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "Content-Length is required")
    return await svc(request).blobs.write_part(
        device, blob_id, int(offset), int(length), _body(request)
    )


@endpoint
async def delete_blob(request: Request) -> Done:
    """Delete a blob uploaded by this account."""
    device = await authenticated(request)
    return await svc(request).blobs.delete(device, _blob_id(request))


async def download(request: Request) -> Response:
    """The blob's ciphertext; ``Range: bytes=N-`` resumes an interrupted download."""
    try:
        device = await authenticated(request)
        blob_id = _blob_id(request)
        start = 0
        header = request.headers.get("range")
        if header is not None:
            match = _RANGE.fullmatch(header.strip())
            if match is None:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "only 'Range: bytes=N-' is supported")
            start = int(match.group(1))
        row, chunks = await svc(request).blobs.open(device, blob_id, start)
    except ProtocolError as exc:
        return JSONResponse(exc.to_body(), status_code=exc.http_status)
    headers = {"content-length": str(row.size - start), "accept-ranges": "bytes"}
    if header is not None:
        headers["content-range"] = f"bytes {start}-{row.size - 1}/{row.size}"
    return StreamingResponse(
        chunks,
        status_code=206 if header is not None else 200,
        media_type="application/octet-stream",
        headers=headers,
    )


API: list[ApiRoute] = [
    ("POST", "/v1/blobs", create_blob, BlobCreate, BlobStatus, True),
    ("GET", "/v1/blobs/usage", blob_usage, None, BlobUsage, True),
    ("GET", "/v1/blobs/{blob_id}", blob_status, None, BlobStatus, True),
    ("PUT", "/v1/blobs/{blob_id}", put_part, None, BlobStatus, True),
    ("DELETE", "/v1/blobs/{blob_id}", delete_blob, None, Done, True),
]

# Raw (non-JSON) responses, outside the OpenAPI table.
RAW_ROUTES = [Route("/v1/blobs/{blob_id}/content", download, methods=["GET"])]
