"""``selhn serve``: an index behind a JSON API and one web page (FastAPI, the ``serve`` extra).

- ``GET /api/search?text=...&k=20``: the images a caption describes;
- ``POST /api/search?k=20`` with a multipart ``file``: the images nearest an uploaded image;
- ``GET /api/info``: the index's size, model and faiss choice;
- ``GET /thumb/{row}`` and ``GET /image/{row}``: a thumbnail (JPEG) and the file of an index row;
- ``GET /``: the page.

Files are reached only by their row in the index, so no request names a path. Every error
answer has a JSON ``{"error": ...}`` body: 4xx for a bad request, 500 (the details in the
server's log) for a failure of the server.
"""

import io
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files as package_files
from typing import Any

from selhn.extras import require

require("serve", "selhn serve")  # FastAPI reads the annotations below: imported at module level

from fastapi import FastAPI, HTTPException, Query, Request, UploadFile  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from selhn.encoder import Encoder  # noqa: E402
from selhn.index.store import Hit, ImageIndex  # noqa: E402


@dataclass(frozen=True)
class Limits:
    """What a request may ask: results per query, query length, upload size."""

    max_k: int = 100
    max_query_chars: int = 1000
    max_upload_bytes: int = 10 * 2**20
    max_upload_pixels: int = 40_000_000
    thumbnail_px: int = 256

    def __post_init__(self) -> None:
        if self.max_k < 1 or self.max_query_chars < 1 or self.max_upload_bytes < 1:
            raise ValueError("--max-k and --max-upload-mb must be positive")


def _hit_json(hit: Hit) -> dict[str, Any]:
    out = {"image": hit.file, "score": round(hit.score, 6), "row": hit.row}
    out["thumbnail"], out["url"] = f"/thumb/{hit.row}", f"/image/{hit.row}"
    if hit.captions is not None:
        out["captions"] = hit.captions
    return out


def create_app(index: ImageIndex, encoder: Encoder, limits: Limits | None = None) -> FastAPI:
    """The FastAPI application serving ``index``, whose queries ``encoder`` encodes."""
    limits = limits or Limits()
    largest_k = min(limits.max_k, len(index))
    model = encoder.reference  # the checkpoint loaded, which may have moved since indexing
    page = package_files("selhn.serve").joinpath("page.html").read_text(encoding="utf-8")
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

    @app.middleware("http")
    async def limit_uploads(request: Request, call_next: Any) -> Any:
        declared = request.headers.get("content-length")
        if request.method == "POST" and not (declared and declared.isdigit()):
            message = "an upload needs a Content-Length header"  # so its size is known first
            return JSONResponse({"error": message}, status_code=411)
        if declared and declared.isdigit() and int(declared) > limits.max_upload_bytes + 2**16:
            return JSONResponse({"error": _too_large(limits)}, status_code=413)
        return await call_next(request)

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
        if not text.strip():
            raise HTTPException(400, "the query is empty; give text to search for")
        if len(text) > limits.max_query_chars:
            raise HTTPException(
                400, f"the query has {len(text)} characters; at most {limits.max_query_chars}"
            )
        unknown = encoder.unknown_words(text)
        warnings = [f"words the model does not know: {', '.join(unknown)}"] if unknown else []
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
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                width, height = image.size
        except Exception:
            raise HTTPException(400, "not an image: not an image format Pillow reads") from None
        if width * height > limits.max_upload_pixels:
            raise HTTPException(
                413,
                f"the image has {width} x {height} pixels; at most {limits.max_upload_pixels:,}",
            )
        try:
            pixels = encoder.read_image(io.BytesIO(data), file.filename or "the upload")
        except ValueError as err:
            raise HTTPException(400, f"not an image: {err}") from None
        return answer({"upload": file.filename}, encoder.encode_pixels(pixels[None]), k, [])

    def row_file(row: int) -> str:
        if not 0 <= row < len(index):
            raise HTTPException(404, f"no image {row} in the index (rows 0..{len(index) - 1})")
        return index.files[row]

    @lru_cache(maxsize=1024)
    def thumbnail(row: int) -> bytes:
        with Image.open(row_file(row)) as image:
            image.draft("RGB", (limits.thumbnail_px, limits.thumbnail_px))  # JPEG: decode small
            image = image.convert("RGB")
            image.thumbnail((limits.thumbnail_px, limits.thumbnail_px))
            out = io.BytesIO()
            image.save(out, "JPEG", quality=85)
        return out.getvalue()

    @app.get("/thumb/{row}")
    def thumb(row: int) -> Response:
        try:
            data = thumbnail(row)
        except OSError as err:
            raise HTTPException(404, f"image {row} cannot be read any more ({err})") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/image/{row}")
    def image(row: int) -> FileResponse:
        path = row_file(row)
        if not os.path.isfile(path):
            raise HTTPException(404, f"image {row} is no longer at {path}")
        return FileResponse(path)

    return app


def _too_large(limits: Limits) -> str:
    return f"the upload is larger than {limits.max_upload_bytes / 2**20:g} MiB"
