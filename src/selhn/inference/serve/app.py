"""``selhn serve``: an index behind a JSON API and one web page (FastAPI, the ``serve`` extra).

- ``GET /api/search?text=...&k=20``: the images a caption describes;
- ``POST /api/search?k=20`` with a multipart ``file``: the images nearest an uploaded image;
- ``POST /api/search/vector`` with JSON ``{"embedding": [...], "k": 20}``: the images nearest
  an embedding of the model's space (normalised first);
- each with ``modality=text`` (where the index holds captions): its captions instead;
- ``GET /api/info``: the index's size, model and faiss choice; ``GET /health``: liveness;
- ``GET /thumb/{row}`` and ``GET /image/{row}``: a thumbnail (JPEG) and the file of an index row;
- ``GET /``: the page; ``GET /docs``: the API's OpenAPI page (``/openapi.json``).

What a request can reach is bounded: only hosts named as allowed are answered (so a page
elsewhere cannot reach the server through DNS rebinding); a request body is counted as it
arrives and refused past the upload limit, whatever its headers say; an image is refused above
the pixel limit from its header, JPEGs are decoded reduced, and at most ``max_decodes`` images
are decoded at once. Files are reached only by their row in the index, and sent only while they
are the files indexed (``ImageIndex.read``). Every error answer has a JSON ``{"error": ...}``
body without server paths: 4xx for a bad request, 500 (the details in the server's log) for a
failure of the server.
"""

import io
import logging
import mimetypes
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files as package_files
from pathlib import PurePosixPath
from typing import Any, Literal

from selhn.utils.extras import require

require("serve", "selhn serve")  # FastAPI reads the annotations below: imported at module level

import torch  # noqa: E402
from fastapi import FastAPI, HTTPException, Query, Request, UploadFile  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse, Response  # noqa: E402
from PIL import Image  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from selhn.data.image_files import TooManyPixels  # noqa: E402
from selhn.inference.encoder import Encoder  # noqa: E402
from selhn.inference.index.captions import CaptionHit, CaptionIndex  # noqa: E402
from selhn.inference.index.files import RefusedFile  # noqa: E402
from selhn.inference.index.store import Hit, ImageIndex  # noqa: E402
from selhn.inference.serve.guards import LOOPBACK, AllowedHosts, BodyLimit  # noqa: E402
from selhn.inference.serve.images import thumbnail_jpeg  # noqa: E402

Modality = Literal["image", "text"]  # what a search returns: images, or the index's captions
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


def _caption_json(hit: CaptionHit, index: ImageIndex) -> dict[str, Any]:
    """A caption found, with the image it describes."""
    return {"caption": hit.caption, "score": round(hit.score, 6), "row": hit.row,
            "image": index.files[hit.row], "thumbnail": f"/thumb/{hit.row}",
            "url": f"/image/{hit.row}"}  # fmt: skip


class VectorQuery(BaseModel):
    """A query by embedding: a vector of the model's space, normalised before the search."""

    embedding: list[float]
    k: int | None = None
    modality: Literal["image", "text"] = "image"


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
    captions = CaptionIndex(index.captions, encoder) if index.captions is not None else None
    app = FastAPI(title="selhn search", redoc_url=None)

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

    def check_k(k: int | None, modality: str = "image") -> int:
        """``k``, or 20 (at most the number searched) when not given."""
        if modality == "text" and captions is None:
            raise HTTPException(400, "this index holds no captions: search modality=image")
        largest = largest_k if modality == "image" else min(limits.max_k, len(captions))
        if k is None:
            return min(20, largest)
        if not 1 <= k <= largest:
            raise HTTPException(400, f"k must be in [1, {largest}]; got {k}")
        return k

    def answer(
        query: dict[str, Any], embedding: Any, k: int, warnings: list[str], modality: str
    ) -> dict:
        """The images (``modality="image"``) or captions (``"text"``) nearest ``embedding``."""
        if modality == "text":
            found = [_caption_json(h, index) for h in captions.search(embedding[0], k)]
        else:
            found = [_hit_json(h) for h in index.search(embedding, k)[0]]
        return {**query, "k": k, "modality": modality, "hits": found, "warnings": warnings}

    @app.get("/", response_class=HTMLResponse)
    def home() -> str:
        return page

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "images": len(index)}

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "images": len(index),
            "max_k": largest_k,
            "captions": index.captions is not None,
            "caption_count": len(captions) if captions is not None else 0,
            "image_queries": encoder.image_problem is None,
            "model": model,
            "faiss": index.meta["faiss"],
        }

    @app.get("/api/search")
    def search_text(
        text: str = Query(""), k: int | None = Query(None), modality: Modality = "image"
    ) -> dict[str, Any]:
        k = check_k(k, modality)
        if len(text) > limits.max_query_chars:
            raise HTTPException(
                400, f"the query has {len(text)} characters; at most {limits.max_query_chars}"
            )
        try:
            warnings = encoder.check_query(text)
        except ValueError as err:
            raise HTTPException(400, str(err)) from None
        return answer({"text": text}, encoder.encode_texts([text]), k, warnings, modality)

    @app.post("/api/search")
    def search_image(
        file: UploadFile, k: int | None = Query(None), modality: Modality = "image"
    ) -> dict[str, Any]:
        k = check_k(k, modality)
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
        embedding = encoder.encode_pixels(pixels[None])
        return answer({"upload": file.filename}, embedding, k, [], modality)

    @app.post("/api/search/vector")
    def search_vector(query: VectorQuery) -> dict[str, Any]:
        k = check_k(query.k, query.modality)
        vector = torch.tensor(query.embedding, dtype=torch.float32)
        if vector.shape != (encoder.embed_size,):
            raise HTTPException(
                400, f"embedding must hold {encoder.embed_size} numbers; got {len(vector)}"
            )
        norm = vector.norm()
        if not bool(torch.isfinite(vector).all()) or not 0 < float(norm) < float("inf"):
            raise HTTPException(400, "embedding must be finite numbers, not all zero")
        return answer({}, (vector / norm)[None], k, [], query.modality)

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
            return thumbnail_jpeg(data, limits.thumbnail_px, limits.max_pixels)

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
    bodies = BodyLimit(app, limit, _too_large(limits), limits.upload_timeout_s, limits.max_uploads)
    return AllowedHosts(bodies, allowed_hosts)


def _too_large(limits: Limits) -> str:
    return f"the upload is larger than {limits.max_upload_bytes / 2**20:g} MiB"
