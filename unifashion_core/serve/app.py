"""The HTTP API and the web gallery of `unifashion serve` (docs/design.md section 9), on FastAPI.

:func:`create_app` loads the model and the live catalogue once. Searches, captions and generation
read; ``POST /items`` and ``DELETE /items/{id}`` write durably (fsync before the 200) and need the
API key when one is set. Every error is JSON ``{"error": "..."}``; a client never names a path on
the server: images are addressed by item id.
"""

import base64
import binascii
import contextlib
import hmac
import json
import mimetypes
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from unifashion_core import __version__
from unifashion_core.inference import GenerationRequest
from unifashion_core.retrieval.payload import field_value
from unifashion_core.retrieval.upsert import NewItem
from unifashion_core.serve import schemas
from unifashion_core.serve.http import (
    JSON_FORM_FIELDS,
    ApiError,
    BodyLimit,
    Metrics,
    RequestMetrics,
    decode_upload,
    install_error_handlers,
    read_request,
)
from unifashion_core.serve.service import ReadOnly, Service
from unifashion_core.serve.settings import SETTINGS_ENV, ServeSettings, check_exposure

STATIC = Path(__file__).parent / "static"
router = APIRouter()


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI: these statuses answer ``{"error": ...}``."""
    return {status: {"model": schemas.ErrorBody} for status in statuses}


def _body(json_model: type, form_model: type | None = None) -> dict[str, Any]:
    """OpenAPI: a request body that is JSON, or a multipart form with an ``image`` file."""
    form = (form_model or json_model).model_json_schema(ref_template="#/components/schemas/{model}")
    properties = {name: ({"type": "string", "description": "a JSON object"} if name in JSON_FORM_FIELDS else value)
                  for name, value in form.get("properties", {}).items()}
    properties["image"] = {"type": "string", "format": "binary", "description": "an image file"}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{json_model.__name__}"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": properties}}}}}


def _service(request: Request) -> Service:
    return request.app.state.service


def image_url(item_id: str) -> str:
    """The URL of an item's image (relative to the server)."""
    return f"/items/{quote(item_id, safe='')}/image"


def authorize(request: Request) -> None:
    """Refuse a write: 403 on a read-only server, 401 without the right API key (when one is set)."""
    service = _service(request)
    if service.settings.read_only:
        raise ReadOnly("this server is read-only (--read-only); it accepts no upserts or deletes.")
    if service.api_key is None:
        return
    bearer = request.headers.get("authorization", "")
    given = request.headers.get("x-api-key") or (bearer[7:].strip() if bearer[:7].lower() == "bearer " else "")
    if not given or not hmac.compare_digest(given.encode(), service.api_key.encode()):
        raise ApiError(401, "this endpoint needs the API key: send Authorization: Bearer KEY or X-API-Key: KEY",
                       headers={"WWW-Authenticate": "Bearer"})


async def _upload(request: Request, upload: UploadFile, name: str) -> tuple[Image.Image, Any]:
    """Decode an uploaded image off the event loop."""
    data = await upload.read()
    limit = _service(request).settings.max_pixels
    return await run_in_threadpool(decode_upload, data, upload.content_type, limit, name)


async def _query_image(request: Request, upload: UploadFile | None, item: str | None) -> Image.Image | None:
    """The image of a caption or generate request: an upload, a catalogue item's, or none."""
    if upload is not None and item is not None:
        raise ApiError(422, "give an image file or an item, not both")
    if upload is not None:
        return (await _upload(request, upload, "the image"))[0]
    if item is not None:
        service = _service(request)
        return await run_in_threadpool(service.item_image, service.snapshot(), item)
    return None


@router.post("/search", response_model=schemas.SearchResponse, openapi_extra=_body(schemas.SearchQuery),
             responses=_errors(400, 404, 413, 415, 422))
async def search(request: Request) -> schemas.SearchResponse:
    """Rank the catalogue for a text (t2i), an image (i2t, or i2i with `mode`), or both (composed, `cir`).

    The image is a multipart file `image`, or the catalogue item `item` ("more like this").
    Filters apply before the top k is cut.
    """
    query, upload = await read_request(request, schemas.SearchQuery)
    image = (await _upload(request, upload, "the query image"))[0] if upload is not None else None
    answer = await run_in_threadpool(_service(request).search, query.text, image, query.item, query.k, query.mode,
                                     query.caption_weight, query.use_captions, query.filter, query.composed,
                                     query.image_weight)
    hits = [schemas.SearchHit(rank=r.rank, id=r.id, score=r.score, caption=r.caption, image_url=image_url(r.id),
                              fields=r.fields) for r in answer.results]
    return schemas.SearchResponse(mode=answer.mode, composed_score=answer.composed_score, num_items=answer.num_items,
                                  results=hits)


@router.get("/items/{item_id:path}/image", responses={200: {"content": {"image/*": {}}}, **_errors(404)})
async def item_image(item_id: str, request: Request) -> FileResponse:
    """An item's image, by id."""
    path = _service(request).snapshot().image_file(item_id)
    if path is None or not path.is_file():
        raise ApiError(404, f"item {item_id!r} has no image on this server")
    return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")


@router.get("/items/{item_id:path}", response_model=schemas.ItemOut, responses=_errors(404))
async def get_item(item_id: str, request: Request) -> schemas.ItemOut:
    """An item's record: caption, filterable fields and image URL."""
    record = _service(request).snapshot().item(item_id)
    return schemas.ItemOut(id=record.id, caption=record.caption, fields=record.fields, image_url=image_url(record.id))


@router.post("/items", response_model=schemas.UpsertResponse, openapi_extra=_body(schemas.ItemsIn, schemas.ItemForm),
             responses=_errors(400, 401, 403, 413, 415, 422, 503))
async def upsert_items(request: Request) -> schemas.UpsertResponse:
    """Add or replace items (image + text + fields): embedded, written durably, searchable on return.

    JSON `{"items": [{"id", "text", "image" (URL-safe base64), "fields"}]}`, or one item as a
    multipart form (`id`, `text`, `fields` as JSON text, file `image`). Needs the API key.
    """
    authorize(request)
    body, upload = await read_request(request, schemas.ItemsIn, schemas.ItemForm)
    if isinstance(body, schemas.ItemForm):
        if upload is None:
            raise ApiError(422, "the image file is required (multipart file field 'image')")
        entries = [(body, *(await _upload(request, upload, f"the image of {body.id!r}")))]
    else:
        entries = [(item, *(await run_in_threadpool(decode_upload, _base64(item.image, item.id), None,
                                                    _service(request).settings.max_pixels,
                                                    f"the image of {item.id!r}")))
                   for item in body.items]
    items = [NewItem(entry.id, entry.text, image, stored, fields=_fields(entry.fields))
             for entry, image, stored in entries]
    answer = await run_in_threadpool(_service(request).upsert, items)
    return schemas.UpsertResponse(upserted=answer.upserted, replaced=answer.replaced, num_items=answer.num_items)


def _base64(text: str, item_id: str) -> bytes:
    """URL-safe (or standard) base64, padding optional."""
    try:
        return base64.b64decode(text.translate(str.maketrans("-_", "+/")) + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"the image of {item_id!r} is not URL-safe base64") from None


def _fields(fields: dict[str, Any]) -> dict[str, str]:
    """Field values as the strings filters compare with."""
    for name in fields:
        if not name.strip() or len(name) > 64:
            raise ApiError(422, f"field names must be 1 to 64 characters, got {name!r}")
    return {name: field_value(value) for name, value in fields.items()}


@router.delete("/items/{item_id:path}", response_model=schemas.DeleteResponse,
               responses=_errors(401, 403, 404, 503))
async def delete_item(item_id: str, request: Request) -> schemas.DeleteResponse:
    """Remove an item, durably. Needs the API key."""
    authorize(request)
    num_items = await run_in_threadpool(_service(request).delete, item_id)
    return schemas.DeleteResponse(deleted=item_id, num_items=num_items)


@router.post("/caption", response_model=schemas.CaptionResponse, openapi_extra=_body(schemas.CaptionQuery),
             responses=_errors(400, 404, 413, 415, 422, 501))
async def caption(request: Request) -> schemas.CaptionResponse:
    """Caption an image (multipart file `image`) or a catalogue item's image, in a `style`."""
    query, upload = await read_request(request, schemas.CaptionQuery)
    image = await _query_image(request, upload, query.item)
    if image is None:
        raise ApiError(422, "give an image file (multipart field 'image') or an item")
    text, style = await run_in_threadpool(_service(request).caption, image, query.style, query.max_new_tokens,
                                          query.num_beams)
    return schemas.CaptionResponse(caption=text, style=style)


@router.post("/generate", response_class=Response, openapi_extra=_body(schemas.GenerateQuery),
             responses={200: {"content": {"image/png": {}}, "description": "A PNG; its text chunks "
                              "`unifashion:*` (and the header X-Unifashion-Generation) hold the settings."},
                        **_errors(400, 404, 413, 415, 422, 501)})
async def generate(request: Request) -> Response:
    """Generate a garment image from a text, optionally with a reference image (upload or item)."""
    query, upload = await read_request(request, schemas.GenerateQuery)
    image = await _query_image(request, upload, query.item)
    wanted = GenerationRequest(text=query.text, image=image, steps=query.steps, sampler=query.sampler,
                               guidance=query.guidance, seed=query.seed)
    png, settings = await run_in_threadpool(_service(request).generate, wanted)
    return Response(png, media_type="image/png",
                    headers={"X-Unifashion-Generation": json.dumps(settings, ensure_ascii=True, default=str)})


@router.get("/healthz", response_model=schemas.Health)
async def healthz(request: Request) -> schemas.Health:
    """Liveness and what is served."""
    service = _service(request)
    view = service.snapshot()
    writes = "disabled" if service.settings.read_only else ("api-key" if service.api_key else "open")
    return schemas.Health(status="ok", num_items=view.num_items, num_live=view.num_live, segments=view.seq,
                          fingerprint=view.fingerprint, kind=view.base.kind, has_captions=view.has_captions,
                          heads=list(service.heads), writes=writes)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Request counts and latency histograms (Prometheus text format)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    body = request.app.state.metrics.exposition(_service(request).snapshot())
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def gallery() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request models the JSON-or-multipart endpoints read themselves."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (schemas.SearchQuery, schemas.ItemsIn, schemas.ItemForm, schemas.CaptionQuery,
                      schemas.GenerateQuery):
            found = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(found.pop("$defs", {}))
            components[model.__name__] = found
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: ServeSettings) -> FastAPI:
    """The server's app; the model and the catalogue are loaded once, here.

    Raises:
        UserError: writes exposed off loopback without a key, an index built by another model, ...
    """
    check_exposure(settings)
    service = Service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="unifashion", version=__version__, docs_url="/docs", redoc_url=None, lifespan=lifespan,
                  description="Search a fashion catalogue by text, image or both; keep it up to date by id; "
                              "caption and generate garments. Errors are JSON `{\"error\": \"...\"}`.")
    app.state.service = service
    app.state.metrics = Metrics()
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def app_from_environment() -> FastAPI:
    """The app of one uvicorn worker (``--workers`` > 1), from the settings in ``UNIFASHION_SERVE_SETTINGS``."""
    return create_app(ServeSettings.from_env(os.environ[SETTINGS_ENV]))
