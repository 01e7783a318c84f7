"""The functions as an HTTP service: webhook targets, presign and health, on Starlette.

Routes (``bucketbrush serve-functions``, port 8080 in the compose file):

- ``POST /events/minio``: MinIO / RustFS webhook targets (``Authorization: Bearer <token>``).
- ``POST /events/s3``: a plain S3 event notification from anything else (same token).
- ``POST /events/sns``: an SNS HTTP(S) subscription; trusted by topic allow-list and message
  signature instead of the token (see ``functions.sns``). Raw message delivery is refused.
- ``POST /presign``: ``{recipe, filename, content_type, params, webhook, webhook_events}`` -> a
  presigned POST and a presigned GET for the job's manifest (token). Recipe and params are
  checked first by the validator the composition root injects (400 with ``code``
  ``unknown_recipe`` / ``invalid_params``).
- ``GET /manifest-url?job_id=JOB``: a fresh presigned GET for the job's manifest, plus one per
  output once it succeeded (token).
- ``GET /health``: broker and bucket reachability, runner heartbeats, queue depths.
- ``GET /metrics``: Prometheus metrics (handler outcomes, store requests; bucketbrush/metrics.py).
- ``GET /`` (the studio page), ``GET /recipes`` and ``/studio/...``: see ``functions.studio_api``.

A 2xx means every record was handled (enqueued, or a duplicate/ignored/rejected outcome) and
the body lists the outcomes. The broker or the store failing answers 503, so the sender
retries; the handler de-duplicates the retry. Records are handled on the handler's bounded
pool (functions/pool.py): up to ``handler_concurrency`` at once, in arrival order for one key;
when ``handler_max_pending`` records are already waiting or being handled, the request gets
503 with ``Retry-After`` at once instead of a thread or a place in an unbounded queue. Input
that can never succeed (not JSON, not an S3 event, a key with control characters or ``..``
segments) answers 400 and enqueues nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bucketbrush import metrics
from bucketbrush.errors import BucketbrushError, JobError
from bucketbrush.layout import unsafe_key
from bucketbrush.presign import ParamsValidator, presign_upload
from bucketbrush.settings import Settings
from bucketbrush.status import job_queue_depths, runner_heartbeats
from bucketbrush.store import Bucket
from bucketbrush.tenants import TenantsFile
from functions.events import InvalidEvent, S3Record, parse_records
from functions.handler import Handler
from functions.pool import PoolFull
from functions.sns import MESSAGE_TYPES, Fetch, SnsMalformed, SnsRejected, SnsUnavailable, SnsVerifier, fetch_url

log = logging.getLogger(__name__)

HEALTH_PROBE_TIMEOUT_S = 5.0
# The Retry-After of a 503 when the handler holds handler_max_pending records.
RETRY_AFTER_S = 1


class HttpError(Exception):
    """Answer ``status`` with ``{"error": message}``; logged as a warning."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def _error(request: Request, exc: HttpError) -> JSONResponse:
    client = request.client.host if request.client else "?"
    log.warning("%s %s from %s: %d %s", request.method, request.url.path, client, exc.status, exc.message)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else exc.headers
    body = {"error": exc.message} | ({"code": exc.code} if exc.code else {})
    return JSONResponse(body, status_code=exc.status, headers=headers)


class FunctionsApp:
    """The endpoints, bound to one Handler (broker + bucket) and one SNS verifier."""

    def __init__(self, settings: Settings, handler: Handler, bucket: Bucket, fetch: Fetch,
                 validate: ParamsValidator | None = None) -> None:
        self.settings = settings
        self.handler = handler
        self.bucket = bucket
        self.validate = validate
        token = settings.functions_token
        self.token = token.get_secret_value().encode() if token else None
        self.max_body = settings.functions_max_body_bytes
        self.sns = SnsVerifier(settings.sns_topic_arns, fetch=fetch)
        # Tenants' own tokens (bucketbrush/tenants.py): /presign, /manifest-url and the studio
        # API as that tenant, in its prefix; never the event endpoints.
        self.tenants = TenantsFile.from_settings(settings)
        if self.token is None:
            log.warning("no functions_token configured: /events/minio, /events/s3 and /presign refuse every request")
        if validate is None:
            log.warning("no params validator: /presign signs any recipe and params (the runner still checks them)")

    # -- request plumbing -----------------------------------------------------------------

    def _check_token(self, request: Request, *, tenants: bool = False) -> str | None:
        """Refuse a request without the host's token (or, where ``tenants``, a tenant's); the
        tenant the request acts as: the host's own (``settings.tenant``) or the token's tenant."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        given = value.strip() if scheme.lower() == "bearer" else ""
        if self.token is not None and given and hmac.compare_digest(given.encode(), self.token):
            return self.settings.tenant
        if tenants and given and (tenant := self.tenants.tenant_for_token(given)) is not None:
            return tenant
        if self.token is None and not tenants:
            raise HttpError(401, "no token is configured on this server")
        raise HttpError(401, "missing or wrong bearer token")

    def as_tenant(self, tenant: str | None) -> tuple[Settings, Bucket]:
        """Settings and bucket view for a request acting as ``tenant``."""
        if tenant == self.settings.tenant:
            return self.settings, self.bucket
        return self.settings.model_copy(update={"tenant": tenant}), self.bucket.for_tenant(tenant)

    async def _body(self, request: Request) -> bytes:
        """The body, refused before reading when Content-Length is over the limit and while
        streaming when a chunked body grows past it."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HttpError(400, "bad Content-Length")
            if int(declared) > self.max_body:
                raise HttpError(413, f"body over {self.max_body} bytes")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body:
                    raise HttpError(413, f"body over {self.max_body} bytes")
                chunks.append(chunk)
        except ClientDisconnect as exc:
            raise HttpError(400, "client disconnected mid-body") from exc
        return b"".join(chunks)

    async def _enqueue(self, records: list[S3Record]) -> JSONResponse:
        for record in records:
            if problem := unsafe_key(record.key):
                raise HttpError(400, f"unsafe key {record.key!r}: {problem}")
        # Handed to the handler's pool from the event loop, in the order the requests came, so
        # two events for one key are handled in that order; never waiting for a slot here.
        futures, full = [], None
        try:
            for record in records:
                futures.append(self.handler.submit(record, block=False))
        except PoolFull as exc:
            full = exc  # the records already taken are handled; the retry finds them duplicates
        if futures:
            await asyncio.wait([asyncio.wrap_future(f) for f in futures])
        if full is not None:
            log.warning("handler full (%s); answering 503", full)
            raise HttpError(503, f"busy: {full}; retry later", headers={"Retry-After": str(RETRY_AFTER_S)}) from full
        try:
            outcomes = [f.result() for f in futures]
        except Exception as exc:
            # Broker or store down: nothing is lost if the sender retries.
            log.error("could not enqueue %d record(s); answering 503", len(records), exc_info=exc)
            raise HttpError(503, f"could not enqueue: {type(exc).__name__}") from exc
        return JSONResponse({"outcomes": [dataclasses.asdict(o) for o in outcomes]})

    def _records(self, payload: bytes | str) -> list[S3Record]:
        try:
            return parse_records(payload)
        except InvalidEvent as exc:
            raise HttpError(400, f"not an S3 event notification: {exc}") from exc

    # -- endpoints ------------------------------------------------------------------------

    async def s3_event(self, request: Request) -> JSONResponse:
        """MinIO/RustFS webhook targets and any other sender of plain S3 event JSON."""
        try:
            self._check_token(request)
            return await self._enqueue(self._records(await self._body(request)))
        except HttpError as exc:
            return _error(request, exc)

    async def sns_event(self, request: Request) -> JSONResponse:
        try:
            return await self._sns(request)
        except HttpError as exc:
            return _error(request, exc)

    async def _sns(self, request: Request) -> JSONResponse:
        body = await self._body(request)
        if request.headers.get("x-amz-sns-rawdelivery", "").lower() == "true":
            raise HttpError(403, "raw message delivery is unsigned: disable it, or POST to /events/s3 with the token")
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise HttpError(400, f"body is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise HttpError(400, "body is not a JSON object")
        if "Type" not in doc and "Records" in doc:
            raise HttpError(403, "raw message delivery is unsigned: disable it, or POST to /events/s3 with the token")
        if doc.get("Type") not in MESSAGE_TYPES:
            raise HttpError(400, f"unknown SNS message type {doc.get('Type')!r}")
        declared = request.headers.get("x-amz-sns-message-type")
        if declared is not None and declared != doc.get("Type"):
            raise HttpError(400, f"x-amz-sns-message-type {declared!r} does not match Type {doc.get('Type')!r}")
        try:
            await run_in_threadpool(self.sns.verify, doc)  # may fetch the signing certificate
            if doc["Type"] == "SubscriptionConfirmation":
                await run_in_threadpool(self.sns.confirm, doc)
                return JSONResponse({"confirmed": doc["TopicArn"]})
        except SnsRejected as exc:
            raise HttpError(403, str(exc)) from exc
        except SnsMalformed as exc:
            raise HttpError(400, str(exc)) from exc
        except SnsUnavailable as exc:
            raise HttpError(503, str(exc)) from exc
        if doc["Type"] == "UnsubscribeConfirmation":
            log.info("SNS topic %s unsubscribed this endpoint", doc["TopicArn"])
            return JSONResponse({"unsubscribed": doc["TopicArn"]})
        return await self._enqueue(self._records(doc["Message"]))

    async def presign(self, request: Request) -> JSONResponse:
        try:
            settings, bucket = self.as_tenant(self._check_token(request, tenants=True))
            body = await self._body(request)
            try:
                doc = json.loads(body)
            except (ValueError, RecursionError) as exc:
                raise HttpError(400, f"body is not JSON: {exc}") from exc
            if not isinstance(doc, dict) or not isinstance(doc.get("recipe"), str):
                raise HttpError(400, 'body must be a JSON object with "recipe"')
            filename = doc.get("filename", "upload.png")
            content_type = doc.get("content_type")
            params = doc.get("params") or {}
            if not isinstance(filename, str) or not isinstance(content_type, (str, type(None))):
                raise HttpError(400, '"filename" and "content_type" must be strings')
            if not isinstance(params, dict):
                raise HttpError(400, '"params" must be a JSON object')
            upload = await self._sign(lambda: presign_upload(
                bucket.public_s3, settings, recipe=doc["recipe"], filename=filename,
                content_type=content_type, params=params, validate=self.validate,
                webhook=doc.get("webhook"), webhook_events=doc.get("webhook_events"),
                conversation=doc.get("conversation")))
            return JSONResponse(upload.model_dump(mode="json"))
        except HttpError as exc:
            return _error(request, exc)

    async def manifest_url(self, request: Request) -> JSONResponse:
        """A fresh presigned GET for ``manifests/<job_id>.json``, and one per output of a
        succeeded job: how an app renews the links its presign reply carried."""
        try:
            _, bucket = self.as_tenant(self._check_token(request, tenants=True))
            job_id = request.query_params.get("job_id", "")
            link, _ = await self._sign(lambda: bucket.manifest_link(job_id))
            return JSONResponse(link.model_dump(mode="json"))
        except HttpError as exc:
            return _error(request, exc)

    async def _sign(self, call: Callable[[], Any]) -> Any:
        """Run a presigning call: bad input is a 400 with its stable code, anything else a 503."""
        try:
            return await run_in_threadpool(call)
        except (JobError, ValueError) as exc:
            raise HttpError(400, str(exc), getattr(exc, "code", "invalid_argument")) from exc
        except BucketbrushError as exc:
            raise HttpError(503, str(exc), exc.code) from exc
        except Exception as exc:
            log.exception("presign failed")
            raise HttpError(503, f"could not presign: {type(exc).__name__}") from exc

    async def metrics(self, request: Request) -> Response:
        """Prometheus metrics (no token: counts only, no keys nor job ids; bucketbrush/metrics.py)."""
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE_LATEST)

    async def health(self, request: Request) -> JSONResponse:
        """200 when both the broker and the bucket answer, 503 otherwise (no token needed)."""
        s = self.settings
        broker_ok, broker_error, _ = await _probe(self.handler.claims.redis.ping)
        bucket_ok, bucket_error, _ = await _probe(lambda: self.bucket.s3.head_bucket(Bucket=self.bucket.name))
        report: dict[str, Any] = {
            "ok": broker_ok and bucket_ok,
            "broker": {"reachable": broker_ok, "error": broker_error},
            "bucket": {"name": s.bucket, "reachable": bucket_ok, "error": bucket_error},
            "queue": None,
            "runners": [],
        }
        if broker_ok:
            ok, _, depths = await _probe(lambda: job_queue_depths(self.handler.broker, s))
            report["queue"] = {"name": s.queue_name, **depths[0]} if ok else None
        if bucket_ok:
            ok, _, runners = await _probe(lambda: runner_heartbeats(self.bucket))
            report["runners"] = runners if ok else []
        return JSONResponse(report, status_code=200 if report["ok"] else 503)


async def _probe(call: Callable[[], Any]) -> tuple[bool, str | None, Any]:
    """Run a blocking check with a deadline: (ok, error text, result)."""
    try:
        result = await asyncio.wait_for(run_in_threadpool(call), HEALTH_PROBE_TIMEOUT_S)
    except TimeoutError:
        return False, f"no answer in {HEALTH_PROBE_TIMEOUT_S:.0f}s", None
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"[:300], None
    return True, None, result


def create_app(settings: Settings, handler: Handler | None = None, bucket: Bucket | None = None, *,
               fetch: Fetch = fetch_url, validate: ParamsValidator | None = None,
               recipes: list[dict[str, Any]] | None = None) -> Starlette:
    """The ASGI app. ``handler`` defaults to one on the settings' broker and bucket; ``fetch``
    (GET a URL, return its body) is how SNS certificates and SubscribeURLs are fetched;
    ``validate`` checks /presign's recipe and params (the composition root passes the runner's);
    ``recipes`` is the catalog the studio page's forms are made from (``GET /recipes``)."""
    bucket = bucket or (handler.bucket if handler else Bucket(settings))
    handler = handler or Handler.from_settings(settings, bucket)
    api = FunctionsApp(settings, handler, bucket, fetch, validate)
    app = Starlette(routes=[
        Route("/events/minio", api.s3_event, methods=["POST"]),
        Route("/events/s3", api.s3_event, methods=["POST"]),
        Route("/events/sns", api.sns_event, methods=["POST"]),
        Route("/presign", api.presign, methods=["POST"]),
        Route("/manifest-url", api.manifest_url, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
    ])
    app.state.functions = api
    # The studio page and its API (imported here: functions.studio_api builds on this module).
    from functions.studio_api import install_studio

    install_studio(app, api, recipes)
    return app


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8080, *,
          validate: ParamsValidator | None = None, recipes: list[dict[str, Any]] | None = None) -> None:
    """Serve ``create_app(settings, ...)`` with uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    # log_config=None: uvicorn's loggers propagate to the CLI's logging setup.
    uvicorn.run(create_app(settings, validate=validate, recipes=recipes), host=host, port=port, log_config=None,
                server_header=False, timeout_graceful_shutdown=10)
