"""The web page and HTTP API that app.py serves: the Service around a Classifier (a pool of threads decoding
uploads, the one thread that owns the model and runs batches), the routes, the upload limit and the
FastAPI application. Errors come back as JSON {"error": "..."} with a 4xx status.
"""
import asyncio
import functools
import io
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from effnet.inference.batch_worker import BatchWorker, QueueFull
from effnet.inference.classifier import Classifier

WEB = Path(__file__).resolve().parents[2] / "web"  # web/ at the top of the repository
# The page loads nothing from elsewhere; photos are shown from blob: URLs, Grad-CAM maps from data: URLs.
PAGE_POLICY = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'"
MiB = 2**20


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_upload_bytes: int = 50 * MiB  # a whole request body, all its files together
    max_files: int = 32
    top_k: int = 5  # classes per photo when the request does not say


@dataclass
class Upload:
    name: str
    data: bytes


class Service:
    """The model and what feeds it: a pool of threads decoding uploads, the batching model thread, and, when
    the main backend has no gradients, a PyTorch classifier of the same weights opened for Grad-CAM."""

    def __init__(self, classifier: Classifier, open_torch: Callable[[], Classifier], limits: Limits,
                 max_batch: int = 32, wait_s: float = 0.0, decode_threads: int | None = None) -> None:
        self.classifier = classifier
        self.limits = limits
        self._open_torch = open_torch
        self._torch: Classifier | None = None  # touched on the model thread only
        self.worker = BatchWorker(classifier.probabilities, max_batch, wait_s)
        self.decoder = ThreadPoolExecutor(decode_threads or min(8, os.cpu_count() or 1), thread_name_prefix="decode")

    def describe(self) -> dict[str, Any]:
        backend = self.classifier.backend
        return {"variant": getattr(backend, "variant", None), "backend": backend.name, "origin": backend.origin,
                "classes": self.classifier.class_names, "image_size": self.classifier.preprocessing.crop,
                "top_k": min(self.limits.top_k, len(self.classifier.class_names)),
                "max_files": self.limits.max_files, "max_upload_bytes": self.limits.max_upload_bytes}

    async def predict(self, uploads: list[Upload], top_k: int) -> list[dict[str, Any]]:
        """Each upload's name and top-k classes, in the order sent; any unreadable upload fails the request."""
        loop = asyncio.get_running_loop()
        arrays = await asyncio.gather(*(loop.run_in_executor(self.decoder, self.classifier.preprocess,
                                                             io.BytesIO(upload.data)) for upload in uploads),
                                      return_exceptions=True)
        failures = [decode_error(upload.name, array) for upload, array in zip(uploads, arrays)
                    if isinstance(array, BaseException)]
        if failures:
            raise HTTPException(max(status for status, _ in failures), "; ".join(text for _, text in failures))
        futures = []
        try:
            for array in arrays:
                futures.append(asyncio.wrap_future(self.worker.submit(array)))
        except QueueFull as error:
            for future in futures:
                future.cancel()
            raise busy(error) from None
        rows = await asyncio.gather(*futures)
        return [{"file": upload.name, "predictions": [{"class": name, "probability": round(probability, 6)}
                                                      for name, probability in self.classifier.rank(row, top_k)]}
                for upload, row in zip(uploads, rows)]

    async def grad_cam(self, upload: Upload) -> dict[str, Any]:
        """Where the network looked for its top class: the crop it saw with the heat map over it, as a PNG."""
        try:
            view, cam, target = await asyncio.wrap_future(self.worker.call(functools.partial(self._cam, upload.data)))
        except QueueFull as error:
            raise busy(error) from None
        except GradCamUnavailable as error:
            raise HTTPException(503, str(error)) from None
        except (OSError, Image.DecompressionBombError) as error:  # the upload, not the model
            raise HTTPException(*decode_error(upload.name, error)) from None
        overlay = await asyncio.get_running_loop().run_in_executor(self.decoder, overlay_uri, view, cam)
        return {"file": upload.name, "class": self.classifier.class_names[target], "overlay": overlay}

    def _cam(self, data: bytes) -> tuple[Image.Image, Any, int]:
        """On the model thread: Grad-CAM, through a PyTorch classifier opened on first use if need be."""
        if self._torch is None and hasattr(self.classifier.backend, "grad_cam"):
            self._torch = self.classifier
        elif self._torch is None:
            try:
                self._torch = self._open_torch()
            except Exception as error:  # tried again on the next request
                raise GradCamUnavailable(f"Grad-CAM needs the PyTorch model of these weights, which could not be "
                                         f"opened ({type(error).__name__}: {error})") from error
        return self._torch.grad_cam(io.BytesIO(data))

    def close(self) -> None:
        self.worker.close()
        self.decoder.shutdown(wait=False, cancel_futures=True)


class GradCamUnavailable(Exception):
    """The served backend has no gradients and a PyTorch model of the same weights could not be opened."""


def busy(error: QueueFull) -> HTTPException:
    return HTTPException(503, f"busy: {error}; retry in a moment", headers={"Retry-After": "1"})


def decode_error(name: str, error: BaseException) -> tuple[int, str]:
    """(HTTP status, message) for an upload that could not be turned into the network's input."""
    if isinstance(error, Image.DecompressionBombError):
        return 413, f"{name}: image too large ({error})"
    if isinstance(error, Image.UnidentifiedImageError):
        return 400, f"{name}: not an image (Pillow cannot identify its format)"
    return 400, f"{name}: cannot decode the image ({type(error).__name__}: {error})"


def overlay_uri(view: Image.Image, cam: Any) -> str:
    """The photo with its heat map as a PNG data: URI, as the run report inlines its images."""
    from effnet.reports import figures  # matplotlib's colour maps, loaded on the first Grad-CAM request only
    from effnet.reports.report_page import data_uri

    return data_uri(figures.cam_overlay(view, cam), "PNG")


async def read_uploads(request: Request, files: list[UploadFile], most: int) -> list[Upload]:
    """The uploaded files of field `file`, checked: at least one, at most `most`, none empty."""
    if not files:
        fields = sorted(set((await request.form()).keys()))
        got = f" (the request has {', '.join(repr(f) for f in fields)})" if fields else ""
        raise HTTPException(400, f"no photo in the request: send it as multipart/form-data field 'file'{got}")
    if len(files) > most:
        raise HTTPException(400, f"too many files: {len(files)} in one request, at most {most}; "
                                 f"send them in several requests")
    uploads = [Upload(file.filename or f"file {index + 1}", await file.read()) for index, file in enumerate(files)]
    empty = [upload.name for upload in uploads if not upload.data]
    if empty:
        raise HTTPException(400, f"{', '.join(empty)}: empty upload")
    return uploads


router = APIRouter()
FILE_FIELD = File([], description="one or more photos (JPEG, PNG, WebP, BMP, TIFF, ...)")


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(WEB / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})


@router.get("/health", summary="200 while the model is loaded and its thread runs, with batching statistics")
async def health(request: Request) -> dict[str, Any]:
    worker = request.app.state.service.worker
    if not worker.alive:
        raise HTTPException(503, "the model thread has stopped; restart the server")
    return {"status": "ok", **asdict(worker.stats)}


@router.get("/model", summary="The loaded model: variant, classes, backend, where it came from, request limits")
async def model(request: Request) -> dict[str, Any]:
    return request.app.state.service.describe()


@router.post("/predict", summary="Top-k classes of each uploaded photo, most likely first")
async def predict(request: Request, file: list[UploadFile] = FILE_FIELD,
                  top_k: int | None = Query(None, ge=1, description="classes per photo (default: the server's "
                                                                     "--top-k)")) -> dict[str, Any]:
    service: Service = request.app.state.service
    uploads = await read_uploads(request, file, service.limits.max_files)
    return {"results": await service.predict(uploads, top_k or service.limits.top_k)}


@router.post("/gradcam", summary="Grad-CAM map of one photo's top class, as a PNG data URL")
async def gradcam(request: Request, file: list[UploadFile] = FILE_FIELD) -> dict[str, Any]:
    service: Service = request.app.state.service
    uploads = await read_uploads(request, file, 1)
    return await service.grad_cam(uploads[0])


class UploadLimit:
    """Refuses a request body over `max_bytes` before reading it whole: at once when its Content-Length says
    so, else (a chunked upload) as soon as the bytes received pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def message(self, size: int | None) -> str:
        sent = f"{size:,} bytes; the limit is" if size is not None else "more than the limit of"
        limit = f"--max-upload-mb {self.max_bytes / MiB:g}"
        return f"upload too large: {sent} {self.max_bytes:,} bytes ({limit} on the server)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = Headers(scope=scope).get("content-length", "") if scope["type"] == "http" else ""
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"error": self.message(int(declared))}, 413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self.message(None), headers={"Connection": "close"})
            return message

        await self.app(scope, counted if scope["type"] == "http" else receive, send)


async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": error.detail}, error.status_code, headers=error.headers)


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = [f"{'.'.join(str(part) for part in problem['loc'][1:]) or problem['loc'][0]}: {problem['msg']}"
                for problem in error.errors()]
    return JSONResponse({"error": "; ".join(problems)}, 422)


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"error": f"the model failed on this request ({type(error).__name__}: {error})"}, 500)


def create_app(service: Service) -> FastAPI:
    """The FastAPI application around a Service; it closes the service when the server stops."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="EfficientNet classifier", summary=service.classifier.backend.origin, lifespan=lifespan)
    app.state.service = service
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=WEB), name="static")
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
    app.add_middleware(UploadLimit, max_bytes=service.limits.max_upload_bytes)
    return app
