"""``selhn serve``: an index behind a JSON API and one web page (FastAPI, the ``serve`` extra).

- ``GET /api/search?text=...&k=20``: the images a caption describes;
- ``POST /api/search?k=20`` with a multipart ``file``: the images nearest an uploaded image;
- ``GET /api/info``: the index's size, model and faiss choice;
- ``GET /thumb/{row}`` and ``GET /image/{row}``: a thumbnail (JPEG) and the file of an index row;
- ``GET /``: the page.

What a request can reach is bounded: only hosts named as allowed are answered (so a page
elsewhere cannot reach the server through DNS rebinding); a request body is counted as it
arrives and refused past the upload limit, whatever its headers say; an image is refused above
the pixel limit from its header, JPEGs are decoded reduced, and at most ``max_decodes`` images
are decoded at once. Files are reached only by their row in the index, and sent only while they
are the files indexed (``ImageIndex.read``). Every error answer has a JSON ``{"error": ...}``
body without server paths: 4xx for a bad request, 500 (the details in the server's log) for a
failure of the server.
"""

import asyncio
import contextlib
import ctypes
import io
import json
import logging
import mimetypes
import re
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files as package_files
from pathlib import PurePosixPath
from typing import Any

from selhn.utils.extras import require

require("serve", "selhn serve")  # FastAPI reads the annotations below: imported at module level

from fastapi import FastAPI, HTTPException, Query, Request, UploadFile  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse, Response  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from selhn.data.image_files import TooManyPixels  # noqa: E402
from selhn.inference.encoder import Encoder  # noqa: E402
from selhn.inference.index.files import RefusedFile  # noqa: E402
from selhn.inference.index.store import Hit, ImageIndex  # noqa: E402

LOOPBACK = ("localhost", "127.0.0.1", "::1")
MULTIPART_ROOM = 2**16  # bytes of multipart framing allowed beside an upload


@dataclass(frozen=True)
class Limits:
    """What a request may ask: results per query, query length, upload size and pixels; how
    many images the server decodes at once, and how many uploads it receives at once."""

    max_k: int = 100
    max_query_chars: int = 1000
    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    max_decodes: int = 2
    max_uploads: int = 8  # request bodies received at once
    upload_timeout_s: float = 10.0  # a body that sends nothing this long is refused
    thumbnail_px: int = 256

    def __post_init__(self) -> None:
        named = {"--max-k": self.max_k, "--max-upload-mb": self.max_upload_bytes,
                 "--max-decodes": self.max_decodes, "max_query_chars": self.max_query_chars,
                 "max_pixels": self.max_pixels, "max_uploads": self.max_uploads,
                 "upload_timeout_s": self.upload_timeout_s}  # fmt: skip
        for name, value in named.items():
            if value < 1:
                raise ValueError(f"{name} must be positive; got {value}")


def _hit_json(hit: Hit) -> dict[str, Any]:
    out = {"image": hit.file, "score": round(hit.score, 6), "row": hit.row}
    out["thumbnail"], out["url"] = f"/thumb/{hit.row}", f"/image/{hit.row}"
    if hit.captions is not None:
        out["captions"] = hit.captions
    return out


def create_app(
    index: ImageIndex,
    encoder: Encoder,
    limits: Limits | None = None,
    allowed_hosts: Iterable[str] = LOOPBACK,
) -> Callable:
    """The ASGI application serving ``index``, whose queries ``encoder`` encodes, to requests
    whose ``Host`` is one of ``allowed_hosts`` (``"*"``: any)."""
    limits = limits or Limits()
    largest_k = min(limits.max_k, len(index))
    model = {key: encoder.reference[key] for key in ("architecture", "embed_size")}
    page = package_files("selhn.inference.serve").joinpath("page.html").read_text(encoding="utf-8")
    decoding = threading.BoundedSemaphore(limits.max_decodes)
    app = FastAPI(title="selhn search", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}"
            for e in err.errors()
        )
        return JSONResponse({"error": problems}, status_code=422)

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception) -> JSONResponse:
        logging.getLogger("selhn.serve").exception("%s %s failed", request.method, request.url)
        return JSONResponse({"error": f"internal error ({type(err).__name__})"}, status_code=500)

    def check_k(k: int | None) -> int:
        """``k``, or 20 (at most the index's size) when not given."""
        if k is None:
            return min(20, largest_k)
        if not 1 <= k <= largest_k:
            raise HTTPException(400, f"k must be in [1, {largest_k}]; got {k}")
        return k

    def answer(query: dict[str, Any], embedding: Any, k: int, warnings: list[str]) -> dict:
        hits = index.search(embedding, k)[0]
        return {**query, "k": k, "hits": [_hit_json(h) for h in hits], "warnings": warnings}

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "images": len(index),
            "max_k": largest_k,
            "captions": index.captions is not None,
            "image_queries": encoder.image_problem is None,
            "model": model,
            "faiss": index.meta["faiss"],
        }

    @app.get("/api/search")
    def search_text(text: str = Query(""), k: int | None = Query(None)) -> dict[str, Any]:
        k = check_k(k)
        if len(text) > limits.max_query_chars:
            raise HTTPException(
                400, f"the query has {len(text)} characters; at most {limits.max_query_chars}"
            )
        try:
            warnings = encoder.check_query(text)
        except ValueError as err:
            raise HTTPException(400, str(err)) from None
        return answer({"text": text}, encoder.encode_texts([text]), k, warnings)

    @app.post("/api/search")
    def search_image(file: UploadFile, k: int | None = Query(None)) -> dict[str, Any]:
        k = check_k(k)
        if encoder.image_problem is not None:
            raise HTTPException(400, encoder.image_problem)
        data = file.file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, _too_large(limits))
        if not data:
            raise HTTPException(400, "the uploaded file is empty")
        try:
            with decoding:
                pixels = encoder.read_image(
                    io.BytesIO(data), "the upload", max_pixels=limits.max_pixels, reduce=True
                )
        except TooManyPixels as err:
            raise HTTPException(413, str(err)) from None
        except ValueError as err:
            raise HTTPException(400, f"not an image: {err}") from None
        return answer({"upload": file.filename}, encoder.encode_pixels(pixels[None]), k, [])

    def indexed(row: int, read: bool = True) -> bytes | None:
        """The file of an index row (with ``read``; else only checked), refused unless it is
        the file indexed."""
        if not 0 <= row < len(index):
            raise HTTPException(404, f"no image {row} in the index (rows 0..{len(index) - 1})")
        try:
            if not read:
                return index.check(row)
            return index.read(row)
        except RefusedFile as err:
            raise HTTPException(410, f"image {row} is not served: {err}") from None
        except OSError as err:
            why = err.strerror or type(err).__name__  # without the file's path
            raise HTTPException(404, f"image {row} cannot be read any more ({why})") from None

    @lru_cache(maxsize=1024)
    def thumbnail(row: int) -> bytes:
        data = indexed(row)
        with decoding:
            return _thumbnail(data, limits.thumbnail_px, limits.max_pixels)

    @app.get("/thumb/{row}")
    def thumb(row: int) -> Response:
        indexed(row, read=False)  # a kept thumbnail only while its file is as indexed
        try:
            data = thumbnail(row)
        except TooManyPixels as err:
            raise HTTPException(422, f"image {row} has no thumbnail: {err}") from None
        except (OSError, Image.DecompressionBombError):
            raise HTTPException(422, f"image {row} cannot be decoded") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/image/{row}")
    def image(row: int) -> Response:
        data = indexed(row)
        suffix = PurePosixPath(index.files[row]).suffix.lower()
        kind = mimetypes.types_map.get(suffix, "")  # by the suffix alone, not the whole name
        kind = kind if kind.startswith("image/") else "application/octet-stream"
        return Response(data, media_type=kind, headers={"X-Content-Type-Options": "nosniff"})

    limit = limits.max_upload_bytes + MULTIPART_ROOM
    bodies = _BodyLimit(app, limit, _too_large(limits), limits.upload_timeout_s, limits.max_uploads)
    return _AllowedHosts(bodies, allowed_hosts)


def return_freed_memory() -> None:
    """Make large freed blocks go back to the system (glibc only; a no-op elsewhere).

    glibc raises its mmap threshold as large blocks are freed, after which blocks of a few MB
    (a decoded image's) come from its heaps and stay there when freed: a server that decoded
    a few large images at once stays that large. A fixed 1 MiB threshold maps every larger
    block on its own and unmaps it when it is freed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 1 << 20)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _thumbnail(data: bytes, px: int, max_pixels: int) -> bytes:
    """A JPEG of at most ``px`` x ``px`` of an image file's bytes. A JPEG is decoded reduced
    (at most 1/8 of its pixels); another format is refused above ``max_pixels``."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if image.format != "JPEG" and width * height > max_pixels:
            raise TooManyPixels(f"{width} x {height} pixels; at most {max_pixels:,}")
        image.draft("RGB", (px, px))
        image = image.convert("RGB")
        image.thumbnail((px, px))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
    return out.getvalue()


def _too_large(limits: Limits) -> str:
    return f"the upload is larger than {limits.max_upload_bytes / 2**20:g} MiB"


Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class _BodyLimit:
    """Reads a request's body before the application sees it, counting the bytes received
    (chunked or not): 413 as soon as they pass ``limit``, 408 when the client sends nothing for
    ``timeout`` seconds, 503 while ``most`` other bodies are being received. So the memory that
    bodies hold is at most ``most`` times ``limit``, however slowly clients send."""

    def __init__(self, app: Callable, limit: int, message: str, timeout: float, most: int) -> None:
        self.app, self.limit, self.message = app, limit, message
        self.timeout, self.most, self.receiving = timeout, most, 0

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, 413, self.message)
        first = await receive()
        if first["type"] == "http.disconnect":
            return None
        if first.get("more_body", False):
            if self.receiving >= self.most:
                return await _send_error(send, 503, "too many uploads at once; try again")
            self.receiving += 1
            try:
                body = await self._rest(first, receive)
            except TimeoutError:
                message = f"the upload stalled: nothing received for {self.timeout:g} s"
                return await _send_error(send, 408, message)
            finally:
                self.receiving -= 1
        else:
            body = first.get("body", b"")
        if body is None:
            return None
        if len(body) > self.limit:
            return await _send_error(send, 413, self.message)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)

    async def _rest(self, first: dict, receive: Receive) -> bytearray | None:
        """The whole body, or as much as passes the limit; None if the client went away."""
        body, message = bytearray(first.get("body", b"")), first
        while message.get("more_body", False) and len(body) <= self.limit:
            message = await asyncio.wait_for(receive(), self.timeout)
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
        return body


class _AllowedHosts:
    """Answers only requests whose ``Host`` header names an allowed host (any port)."""

    def __init__(self, app: Callable, hosts: Iterable[str]) -> None:
        self.app, self.hosts = app, {h.lower().strip("[]") for h in hosts}

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.hosts:
            host = _hostname(_header(scope, b"host") or "")
            if host not in self.hosts:
                message = (
                    f"this server does not answer for host {host!r}; start it with "
                    "--allow-host NAME to allow a name"
                )
                return await _send_error(send, 400, message)
        return await self.app(scope, receive, send)


def _hostname(host: str) -> str:
    """The name of a ``Host`` header, without its port ("[::1]:8000" -> "::1"); "" unless what
    follows the name is a port number."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
    elif host.count(":") == 1:
        name, rest = host.split(":")[0], host[host.index(":") :]
    else:
        name, rest = host, ""
    return name if rest == "" or re.fullmatch(r":[0-9]{1,5}", rest) else ""
