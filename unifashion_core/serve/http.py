"""HTTP plumbing of the server: JSON errors for every failure, the body limit, request metrics, and
reading a request that is either JSON or a multipart form with an image."""

import io
import json
import logging
import os
import time
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unifashion_core.data.images import ImageError, decode_image
from unifashion_core.errors import UserError
from unifashion_core.retrieval.catalogue import CatalogueBusy, CatalogueView, UnknownItem, Upload
from unifashion_core.serve.service import MissingHead, ReadOnly

log = logging.getLogger("unifashion.serve")
Model = TypeVar("Model", bound=BaseModel)
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tiff"}
JSON_FORM_FIELDS = ("filter", "fields")  # multipart fields that carry a JSON object
LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class ApiError(Exception):
    """A failure with its HTTP status and the one sentence the client gets as ``{"error": ...}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than this server's limit of {limit:,} bytes.")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message}`` with ``status``; the message ends with a full stop."""
    message = message.strip()
    return JSONResponse({"error": message if message.endswith((".", "?", "!")) else message + "."}, status,
                        headers=headers)


def status_of(exc: Exception) -> int:
    """The HTTP status of an exception a request raised (500 for anything that is a bug)."""
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, ImageError):
        return 413 if exc.reason == "too_large" else 400
    statuses = ((UnknownItem, 404), (ReadOnly, 403), (MissingHead, 501), (CatalogueBusy, 503), (UserError, 400))
    return next((status for kind, status in statuses if isinstance(exc, kind)), 500)


def describe_validation(errors: list[Any]) -> str:
    """One sentence for pydantic's validation errors (the first one, and how many more)."""
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "the body"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    if first.get("type") == "extra_forbidden":
        return f"unknown field {where!r}{more}; see /docs for the fields this endpoint takes."
    if first.get("type") == "missing":
        return f"the field {where!r} is required{more}."
    return f"{where}: {first.get('msg', 'invalid value')}{more}."


def install_error_handlers(app: Any) -> None:
    """Make every failure a JSON ``{"error": ...}``: 4xx for bad requests, 500 (logged) for bugs."""

    async def validation(request: Request, exc: Exception) -> JSONResponse:
        return error_response(422, describe_validation(list(exc.errors())))  # type: ignore[attr-defined]

    async def http(request: Request, exc: Exception) -> JSONResponse:  # Starlette's: 404 route, 405 method
        return error_response(exc.status_code, str(exc.detail), exc.headers)  # type: ignore[attr-defined]

    async def known(request: Request, exc: Exception) -> JSONResponse:
        status = status_of(exc)
        if status == 500:
            return await internal(request, exc)
        return error_response(status, str(exc), exc.headers if isinstance(exc, ApiError) else None)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal error; the server log has the details")

    for kind in (RequestValidationError, ValidationError):
        app.add_exception_handler(kind, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    for kind in (ApiError, UserError, ImageError):
        app.add_exception_handler(kind, known)
    app.add_exception_handler(Exception, internal)


class BodyLimit:
    """Answers 413 for a request body over ``limit`` bytes, declared or streamed, before it is all read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await error_response(413, str(BodyTooLarge(self.limit)))(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


class Metrics:
    """Request counts and latency histograms, and the catalogue's size, in the Prometheus text format.

    With ``PROMETHEUS_MULTIPROC_DIR`` set (``--workers`` > 1) every worker writes its samples there
    and a scrape of any worker reports all of them (prometheus-client's multiprocess mode).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        if multiprocess:
            from prometheus_client import multiprocess as mp

            mp.MultiProcessCollector(self.registry)
        own = None if multiprocess else self.registry
        self.requests = Counter("unifashion_requests", "HTTP requests by method, route and status.",
                                ["method", "route", "status"], registry=own)
        self.latency = Histogram("unifashion_request_seconds", "HTTP request latency by method and route.",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=own)
        self.items = Gauge("unifashion_catalogue_items", "Items in the live catalogue.", registry=own,
                           multiprocess_mode="mostrecent")
        self.segments = Gauge("unifashion_catalogue_segments", "Writes not yet compacted into the base index.",
                              registry=own, multiprocess_mode="mostrecent")

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def exposition(self, view: CatalogueView) -> bytes:
        """The metrics in the Prometheus text format, with the catalogue's gauges set from ``view``."""
        self.items.set(view.num_items)
        self.segments.set(view.seq)
        return generate_latest(self.registry)


class RequestMetrics:
    """Times every HTTP request and counts it under its route template (``/items/{item_id}``)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - started)


async def read_request(
    request: Request, json_model: type[Model], form_model: type[BaseModel] | None = None
) -> tuple[Any, UploadFile | None]:
    """The body as ``json_model`` (JSON), or as ``form_model`` (a multipart form, default ``json_model``)
    together with its file field ``image``.

    Raises:
        ApiError: 415 for another content type, 422 for malformed JSON or form fields.
        ValidationError: fields that do not fit the model (422).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            data = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise ApiError(422, "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(422, "the JSON body must be an object")
        return json_model.model_validate(data), None
    if content_type != "multipart/form-data":
        raise ApiError(415, f"send application/json or multipart/form-data, not {content_type or 'no content type'}")
    fields, image = {}, None
    for name, value in (await request.form()).multi_items():
        if isinstance(value, UploadFile):
            if name != "image":
                raise ApiError(422, f"unknown file field {name!r}; send the image as the file field 'image'")
            if image is not None:
                raise ApiError(422, "send one image file (the file field 'image' is given twice)")
            image = value if value.filename or value.size else None  # a browser's empty file input
        elif name == "image":
            raise ApiError(422, "the field 'image' must be a file")
        elif name in fields:
            raise ApiError(422, f"the form field {name!r} is given twice")
        else:
            fields[name] = _json_field(name, value) if name in JSON_FORM_FIELDS else value
    return (form_model or json_model).model_validate(fields), image


def _json_field(name: str, value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        raise ApiError(422, f"the form field {name!r} must be a JSON object") from None


def decode_upload(data: bytes, content_type: str | None, max_pixels: int, name: str) -> tuple[Image.Image, Upload]:
    """An uploaded image decoded (RGB) and kept as the bytes to store.

    Raises:
        ApiError: 415 for a declared content type that is not an image.
        ImageError: not an image or corrupt (400), over ``max_pixels`` (413).
    """
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind and not kind.startswith("image/") and kind != "application/octet-stream":
        raise ApiError(415, f"{name} has the content type {kind}; send an image (PNG, JPEG, WebP, ...)")
    image = decode_image(data, max_pixels, name)
    with Image.open(io.BytesIO(data)) as header:
        suffix = SUFFIXES.get(header.format or "", ".img")
    return image, Upload(data, suffix)
