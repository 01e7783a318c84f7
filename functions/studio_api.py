"""The studio page and the small API it calls, added to the functions host (``functions/http.py``).

- ``GET /``: the page (``functions/studio/``: plain ES modules, no build step, nothing from a CDN).
- ``GET /recipes``: each recipe's name, description and params JSON Schema. The functions do not
  import the runner: the schemas are computed by the composition root (``bucketbrush
  serve-functions`` calls ``gpu_runner.recipes.catalog()``) and handed to ``create_app``.
- With the bearer token (as ``/presign``):
  ``GET /studio/jobs`` (recent jobs, newest first, with presigned output URLs),
  ``GET /studio/jobs/{id}`` (one manifest with presigned output URLs),
  ``POST /studio/jobs/{id}/cancel`` (an empty object at ``cancel/<id>``),
  ``GET /studio/deleted``, ``POST /studio/jobs/{id}/delete`` and ``.../restore``
  (``bucketbrush.gallery``: soft delete with bucket versioning).

The page uploads straight to the store with the presigned POST from ``/presign`` and polls the
manifest through the presigned GET in its reply (``manifest_url``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from bucketbrush import gallery
from bucketbrush.errors import BucketbrushError, InvalidState, JobNotFound
from bucketbrush.jobs import is_job_id
from bucketbrush.management import cancel_job, get_job
from bucketbrush.manifest import Manifest
from bucketbrush.store import Bucket
from functions.http import FunctionsApp, HttpError, _error

log = logging.getLogger(__name__)

STUDIO_DIR = Path(__file__).parent / "studio"
RECENT_LIMIT = 200


def job_view(bucket: Bucket, manifest: Manifest) -> dict[str, Any]:
    """A manifest for the page: the manifest's fields plus a presigned GET per output."""
    view = manifest.model_dump(mode="json", include={
        "job_id", "status", "recipe", "params", "outputs", "progress", "error", "warnings", "timings", "updated_at"})
    for out in view["outputs"]:
        out["url"] = bucket.presigned_get(out["key"])
    return view


def recent_jobs(bucket: Bucket, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` most recently written manifests, newest first."""
    keys = []
    for page in bucket.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=bucket.layout.manifests):
        keys += [(obj["LastModified"], obj["Key"]) for obj in page.get("Contents", [])]
    keys.sort(reverse=True)
    jobs = []
    for _, key in keys[:limit]:
        job_id = bucket.layout.job_id_of_manifest(key)
        manifest = bucket.read_manifest(job_id) if job_id else None
        if manifest is not None:
            jobs.append(job_view(bucket, manifest))
    return jobs


class StudioApi:
    def __init__(self, functions: FunctionsApp, recipes: list[dict[str, Any]] | None) -> None:
        self.functions = functions
        self.recipes = recipes

    async def _call(self, request: Request, func: Any, *args: Any) -> JSONResponse:
        """Check the token, run ``func(bucket, *args)`` off the event loop on the bucket as the
        token's tenant sees it, map bucketbrush errors to HTTP."""
        try:
            _, bucket = self.functions.as_tenant(self.functions._check_token(request, tenants=True))
            try:
                return JSONResponse(await run_in_threadpool(func, bucket, *args))
            except JobNotFound as exc:
                raise HttpError(404, str(exc)) from exc
            except InvalidState as exc:
                raise HttpError(409, str(exc)) from exc
            except BucketbrushError as exc:
                raise HttpError(400, str(exc)) from exc
            except Exception as exc:  # the store is down or refuses us: the page may retry
                log.exception("studio call failed: %s", request.url.path)
                raise HttpError(503, f"the store did not answer: {type(exc).__name__}") from exc
        except HttpError as exc:
            return _error(request, exc)

    def _job_id(self, request: Request) -> str:
        job_id = request.path_params["job_id"]
        if not is_job_id(job_id):
            raise HttpError(400, f"not a job id: {job_id!r}")
        return job_id

    async def recipes_list(self, request: Request) -> JSONResponse:
        if self.recipes is None:
            return _error(request, HttpError(503, "no recipe catalog: run the host with `bucketbrush serve-functions`"))
        return JSONResponse({"recipes": self.recipes})

    async def jobs(self, request: Request) -> JSONResponse:
        limit = request.query_params.get("limit", "24")
        if not limit.isdigit() or not 1 <= int(limit) <= RECENT_LIMIT:
            return _error(request, HttpError(400, f"limit must be 1 to {RECENT_LIMIT}"))
        return await self._call(request, lambda b: {"jobs": recent_jobs(b, int(limit))})

    async def job(self, request: Request) -> JSONResponse:
        return await self._with_job(request, lambda b, j: job_view(b, get_job(b, j)))

    async def cancel(self, request: Request) -> JSONResponse:
        return await self._with_job(request, lambda b, j: {"job_id": j, "status": cancel_job(b, j).status})

    async def delete(self, request: Request) -> JSONResponse:
        return await self._with_job(request, lambda b, j: {"job_id": j, "deleted": gallery.soft_delete(b, j)})

    async def restore(self, request: Request) -> JSONResponse:
        return await self._with_job(request, lambda b, j: {"job_id": j, "restored": gallery.restore(b, j)})

    async def deleted(self, request: Request) -> JSONResponse:
        def listing(bucket: Bucket) -> dict[str, Any]:
            if not gallery.versioning_enabled(bucket):
                return {"deleted": [], "versioning": False}
            return {"deleted": gallery.list_deleted(bucket), "versioning": True}

        return await self._call(request, listing)

    async def _with_job(self, request: Request, func: Any) -> JSONResponse:
        try:
            job_id = self._job_id(request)
        except HttpError as exc:
            return _error(request, exc)
        return await self._call(request, func, job_id)


def page_routes() -> list[Route]:
    """``/`` and each of the page's files by name (not a catch-all mount: the host's other
    paths keep their 404 and 405 answers)."""
    types = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
             ".css": "text/css; charset=utf-8"}
    routes = []
    for path in sorted(STUDIO_DIR.iterdir()):
        if path.suffix not in types:
            continue

        async def serve(request: Request, path: Path = path) -> FileResponse:
            return FileResponse(path, media_type=types[path.suffix], headers={"Cache-Control": "no-cache"})

        routes.append(Route(f"/{path.name}", serve, methods=["GET", "HEAD"]))
        if path.name == "index.html":
            routes.append(Route("/", serve, methods=["GET", "HEAD"]))
    return routes


def install_studio(app: Starlette, functions: FunctionsApp, recipes: list[dict[str, Any]] | None) -> None:
    """Add the studio routes and the page (at ``/``) to the functions app."""
    api = StudioApi(functions, recipes)
    app.router.routes.extend([
        Route("/recipes", api.recipes_list, methods=["GET"]),
        Route("/studio/jobs", api.jobs, methods=["GET"]),
        Route("/studio/deleted", api.deleted, methods=["GET"]),
        Route("/studio/jobs/{job_id}", api.job, methods=["GET"]),
        Route("/studio/jobs/{job_id}/cancel", api.cancel, methods=["POST"]),
        Route("/studio/jobs/{job_id}/delete", api.delete, methods=["POST"]),
        Route("/studio/jobs/{job_id}/restore", api.restore, methods=["POST"]),
        *page_routes(),
    ])
    origins = functions.settings.studio_origins
    if origins:  # a page published elsewhere (the bucket) calls this host cross-origin
        app.add_middleware(CORSMiddleware, allow_origins=list(origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"], max_age=3600)
