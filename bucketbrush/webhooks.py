"""Outbound webhooks, signed to the Standard Webhooks spec (the ``standardwebhooks`` package).

Who is told: the job's own webhook (a job spec's ``webhook``, or an upload's
``x-amz-meta-webhook``, signed with ``webhook_job_secret``) and every server-wide subscription
whose events and recipes match (each signed with its own secret). What: ``job.started``,
``job.progress`` and, always, the final ``job.succeeded`` / ``job.failed`` / ``job.cancelled``;
the body's ``data`` is the manifest, each output with a presigned GET ``url``.

How: the runner only enqueues a small message on the webhook queue (``Notifier``); the
delivery actor (``declare_webhook_actor``) POSTs it with a 15 s timeout, no redirects, to an
address it resolved and checked (no loopback, private, link-local or metadata-service
destinations unless ``webhook_allow_private``; never metadata services), and records every
attempt at ``status/webhooks/<job_id>.json``. Non-2xx answers are retried through Dramatiq's
Retries middleware on the spec's schedule (``webhook_retry_schedule_s``), honouring
``Retry-After``; ``410 Gone`` disables the endpoint (``bucketbrush webhooks enable URL``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import dramatiq
import httpx
from dramatiq.middleware import CurrentMessage
from pydantic import BaseModel, ConfigDict
from standardwebhooks import Webhook

from bucketbrush import metrics
from bucketbrush.jobs import WebhookTarget
from bucketbrush.manifest import Manifest
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket

log = logging.getLogger(__name__)

DELIVER_ACTOR = "bucketbrush.deliver_webhook"
Event = Literal["started", "progress", "completed"]
# Cloud instance metadata services: refused even when private destinations are allowed.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200",
))
# Longest Retry-After honoured; the record keeps at most this many attempts per job.
MAX_RETRY_AFTER_S = 24 * 3600
MAX_RECORDED = 200


class Endpoint(BaseModel):
    """Where one delivery goes. The secret never travels in the queue: the worker looks it up
    (``job``: ``webhook_job_secret``; ``subscription``: the subscription with this URL)."""

    model_config = ConfigDict(frozen=True)

    url: str
    kind: Literal["job", "subscription"]


class Delivery(BaseModel):
    """One event for one endpoint: the queue message."""

    webhook_id: str
    type: str
    timestamp: float
    job_id: str
    endpoint: Endpoint
    manifest: dict[str, Any]


def event_type(event: Event, manifest: Manifest) -> str:
    if event == "completed":
        return {"succeeded": "job.succeeded", "failed": "job.failed"}.get(manifest.status, "job.cancelled")
    return f"job.{event}"


def webhook_id(event: Event, manifest: Manifest) -> str:
    """Stable across retries: the job id and the event (and the step, for progress)."""
    if event == "progress":
        return f"{manifest.job_id}.progress.{manifest.progress.step}"
    return f"{manifest.job_id}.{event_type(event, manifest).removeprefix('job.')}"


def endpoints_for(settings: Settings, event: Event, recipe: str, target: WebhookTarget | None,
                  tenant: str | None = None) -> list[Endpoint]:
    """Every endpoint that wants ``event`` of a ``recipe`` job of ``tenant`` (``completed`` goes
    to all). A subscription hears about one tenant's jobs only (its ``tenant``; None: the default's)."""
    found = []
    if target and (event == "completed" or event in target.events):
        found.append(Endpoint(url=target.url, kind="job"))
    for sub in settings.webhook_subscriptions:
        if sub.tenant != tenant:
            continue
        if (event == "completed" or event in sub.events) and (not sub.recipes or recipe in sub.recipes):
            found.append(Endpoint(url=sub.url, kind="subscription"))
    return found


class Notifier:
    """The runner's side: enqueue deliveries, never wait for them, never fail a job over them."""

    def __init__(self, settings: Settings, broker: dramatiq.Broker) -> None:
        self.settings = settings
        self.broker = broker
        broker.declare_queue(settings.webhook_queue_name)

    def emit(self, event: Event, manifest: Manifest, target: WebhookTarget | None) -> int:
        """Enqueue ``event`` for every endpoint that wants it; the number enqueued."""
        endpoints = endpoints_for(self.settings, event, manifest.recipe, target, manifest.tenant)
        data = manifest.model_dump(mode="json")
        sent = 0
        for endpoint in endpoints:
            delivery = Delivery(webhook_id=webhook_id(event, manifest), type=event_type(event, manifest),
                                timestamp=time.time(), job_id=manifest.job_id, endpoint=endpoint, manifest=data)
            try:
                self.broker.enqueue(dramatiq.Message(
                    queue_name=self.settings.webhook_queue_name, actor_name=DELIVER_ACTOR,
                    args=(delivery.model_dump(mode="json"),), kwargs={}, options={},
                ))
                sent += 1
            except Exception:
                log.exception("job %s: could not enqueue the %s webhook", manifest.job_id, delivery.type)
        return sent


# -- the delivery side -----------------------------------------------------------------------

class DestinationRefused(Exception):  # noqa: N818 - a verdict on an address
    """The URL resolves to an address webhooks must not reach."""


def check_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool) -> None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        raise DestinationRefused(f"{ip} is a cloud metadata service")
    if ip.is_multicast or ip.is_unspecified:
        raise DestinationRefused(f"{ip} is not a unicast address")
    if not ip.is_global and not allow_private:
        raise DestinationRefused(f"{ip} is a loopback, private, link-local or reserved address "
                                 "(BUCKETBRUSH_WEBHOOK_ALLOW_PRIVATE allows them)")


def resolve_checked(url: str, *, allow_private: bool) -> str:
    """The address to connect to for ``url``: every address its host resolves to must pass
    ``check_address`` (so a DNS answer cannot slip a private one in); the first is used."""
    parts = httpx.URL(url)
    if parts.scheme not in ("http", "https") or not parts.host:
        raise DestinationRefused(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    infos = socket.getaddrinfo(parts.host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses:
        raise DestinationRefused(f"{parts.host} resolves to nothing")
    for ip in addresses:
        check_address(ip, allow_private=allow_private)
    return str(addresses[0])


def retry_after_s(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(raw).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def disabled_key(settings: Settings) -> str:
    """The Redis set of endpoint URLs that answered 410 (no more deliveries until re-enabled)."""
    return f"{settings.broker_namespace}:webhooks:disabled"


class Deliverer:
    """One HTTP attempt per call, recorded; says whether (and when) to try again."""

    def __init__(self, settings: Settings, bucket: Bucket, redis: Any) -> None:
        self.settings = settings
        self.bucket = bucket
        self.redis = redis
        self.disabled_key = disabled_key(settings)
        self.client = httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False, trust_env=False)

    def secret_for(self, endpoint: Endpoint) -> str | None:
        if endpoint.kind == "job":
            secret = self.settings.webhook_job_secret
            return secret.get_secret_value() if secret else None
        for sub in self.settings.webhook_subscriptions:
            if sub.url == endpoint.url:
                return sub.secret.get_secret_value()
        return None

    def body(self, delivery: Delivery) -> str:
        data = dict(delivery.manifest)
        data["outputs"] = [{**out, "url": self.bucket.presigned_get(out["key"])} for out in data.get("outputs", [])]
        when = datetime.fromtimestamp(delivery.timestamp, tz=UTC).isoformat(timespec="microseconds")
        when = when.replace("+00:00", "Z")  # fixed width: the strings sort in time order too
        return json.dumps({"type": delivery.type, "timestamp": when, "data": data}, separators=(",", ":"))

    def attempt(self, delivery: Delivery, *, attempt: int) -> float | None:
        """POST ``delivery`` once. Returns the delay before the next attempt, or None when done
        (delivered, refused, disabled, or out of retries)."""
        url = delivery.endpoint.url
        entry: dict[str, Any] = {"webhook_id": delivery.webhook_id, "type": delivery.type, "url": url,
                                 "attempt": attempt, "at": time.time()}
        schedule = self.settings.webhook_retry_schedule_s
        retry_in: float | None = schedule[attempt - 1] if attempt <= len(schedule) else None
        try:
            if self.redis.sismember(self.disabled_key, url):
                return self._record(delivery, entry, "skipped", None, error="endpoint disabled after 410 Gone")
            secret = self.secret_for(delivery.endpoint)
            if not secret:
                return self._record(delivery, entry, "refused", None, error=(
                    "no webhook_job_secret on this server" if delivery.endpoint.kind == "job"
                    else "no subscription with this URL any more"))
            ip = resolve_checked(url, allow_private=self.settings.webhook_allow_private)
            body = self.body(delivery)
            now = datetime.now(tz=UTC)
            headers = {
                "content-type": "application/json",
                "user-agent": "bucketbrush-webhooks",
                "webhook-id": delivery.webhook_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": Webhook(secret).sign(delivery.webhook_id, now, body),
            }
            response = self._post(url, ip, body, headers)
        except DestinationRefused as exc:
            return self._record(delivery, entry, "refused", None, error=str(exc))
        except (httpx.HTTPError, OSError) as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            return self._record(delivery, entry, "retrying" if retry_in is not None else "failed", retry_in)
        entry["status_code"] = response.status_code
        entry["duration_ms"] = round(response.elapsed.total_seconds() * 1000, 1)
        if response.is_success:
            return self._record(delivery, entry, "delivered", None)
        if response.status_code == 410:
            self.redis.sadd(self.disabled_key, url)
            return self._record(delivery, entry, "disabled", None, error="410 Gone: endpoint disabled")
        after = retry_after_s(response) if response.status_code == 429 or response.status_code >= 500 else None
        if retry_in is not None and after is not None:
            retry_in = after
        return self._record(delivery, entry, "retrying" if retry_in is not None else "failed", retry_in)

    def _post(self, url: str, ip: str, body: str, headers: dict[str, str]) -> httpx.Response:
        """Connect to the checked ``ip``, not to whatever the host resolves to next."""
        parts = httpx.URL(url)
        headers["host"] = parts.netloc.decode("ascii")
        extensions = {"sni_hostname": parts.host} if parts.scheme == "https" else {}
        return self.client.post(parts.copy_with(host=ip), content=body.encode(), headers=headers,
                                extensions=extensions)

    def _record(self, delivery: Delivery, entry: dict[str, Any], outcome: str, retry_in: float | None,
                *, error: str | None = None) -> float | None:
        entry["outcome"] = outcome
        metrics.WEBHOOK_DELIVERIES.labels(delivery.type, outcome).inc()
        if error:
            entry["error"] = error
        if retry_in is not None:
            entry["retry_in_s"] = retry_in
        log.info("webhook %s to %s: attempt %d %s %s", delivery.webhook_id, entry["url"], entry["attempt"],
                 outcome, entry.get("status_code") or entry.get("error") or "")
        try:
            self._append(delivery.job_id, entry)
        except Exception:
            log.exception("could not record webhook delivery of job %s", delivery.job_id)
        return retry_in

    def _append(self, job_id: str, entry: dict[str, Any]) -> None:
        key = self.bucket.layout.status_key("webhooks", f"{job_id}.json")
        lock = self.redis.lock(f"{self.settings.broker_namespace}:webhooks:lock:{job_id}", timeout=30,
                               blocking_timeout=30)
        with lock:
            record = read_deliveries(self.bucket, job_id) or {"job_id": job_id, "deliveries": []}
            record["deliveries"] = (record["deliveries"] + [entry])[-MAX_RECORDED:]
            self.bucket.s3.put_object(Bucket=self.bucket.name, Key=key, Body=json.dumps(record, indent=1).encode(),
                                      ContentType="application/json")


def read_deliveries(bucket: Bucket, job_id: str) -> dict[str, Any] | None:
    """The delivery record of ``job_id`` (``status/webhooks/<job_id>.json``), or None."""
    from botocore.exceptions import ClientError

    from bucketbrush.store import is_not_found

    key = bucket.layout.status_key("webhooks", f"{job_id}.json")
    try:
        return json.loads(bucket.s3.get_object(Bucket=bucket.name, Key=key)["Body"].read())
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


def declare_webhook_actor(broker: dramatiq.Broker, settings: Settings, deliverer: Deliverer) -> dramatiq.Actor:
    """The delivery actor on the webhook queue. A failed attempt raises ``dramatiq.Retry`` with
    the schedule's (or ``Retry-After``'s) delay: Dramatiq's Retries middleware re-enqueues it."""

    def deliver_webhook(delivery: dict) -> None:
        message = CurrentMessage.get_current_message()
        retries = message.options.get("retries", 0) if message else 0
        delay_s = deliverer.attempt(Delivery.model_validate(delivery), attempt=retries + 1)
        if delay_s is not None:
            raise dramatiq.Retry(f"webhook {delivery['webhook_id']} not delivered yet", delay=int(delay_s * 1000))

    return dramatiq.actor(
        deliver_webhook, broker=broker, actor_name=DELIVER_ACTOR, queue_name=settings.webhook_queue_name,
        # The schedule decides when to stop; this only has to let every scheduled retry through.
        max_retries=len(settings.webhook_retry_schedule_s) + 1,
        time_limit=int((settings.webhook_timeout_s * 2 + 60) * 1000),
    )


def run_webhook_worker(settings: Settings, *, threads: int = 4, ready_file: Any = None) -> None:
    """Deliver webhooks only (``bucketbrush webhooks worker``), for runners started with
    ``webhook_worker_threads=0``; until SIGTERM or SIGINT."""
    import signal
    import threading

    from bucketbrush.broker import build_broker

    broker = build_broker(settings)
    declare_webhook_actor(broker, settings, Deliverer(settings, Bucket(settings), broker.client))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, queues={settings.webhook_queue_name}, worker_threads=threads,
                             worker_timeout=settings.runner_poll_ms)
    worker.start()
    log.info("delivering webhooks from queue %r", settings.webhook_queue_name)
    if ready_file:
        ready_file.write_text("ready\n")
    stop.wait()
    worker.stop(timeout=int(settings.webhook_timeout_s * 1000) + 5_000)
    broker.close()
