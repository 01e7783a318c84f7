"""The ``bucketbrush`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bucketbrush.errors import BucketbrushError
from bucketbrush.settings import Settings


def _params(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; values that parse as JSON (numbers, booleans, lists) keep their type."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--param wants NAME=VALUE, got {pair!r}")
        try:
            params[name] = json.loads(value)
        except ValueError:
            params[name] = value
    return params


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from infra.local import LocalStack

    LocalStack(settings).up(runners=args.runners, report=print)
    return 0


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    from infra.local import LocalStack

    LocalStack(settings).down(report=print)
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.demo import run_demo

    return run_demo(settings)


def cmd_infra_apply(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.store import s3_client
    from infra.bucket import apply_bucket

    for line in apply_bucket(s3_client(settings), settings):
        print(line)
    return 0


def cmd_presign(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.store import s3_client
    from functions.presign import presign_upload

    upload = presign_upload(
        s3_client(settings, public=True), settings, recipe=args.recipe, filename=args.filename,
        content_type=args.content_type, params=_params(args.param), expires_s=args.expires,
    )
    print(upload.model_dump_json(indent=2))
    return 0


def _print_manifest(manifest: Any, bucket: Any) -> None:
    print(f"job {manifest.job_id}: {manifest.status} ({manifest.recipe})")
    if manifest.error:
        print(f"  error {manifest.error.code}: {manifest.error.message}")
    if "processing_s" in manifest.timings:
        print(f"  processing {manifest.timings['processing_s'] * 1000:.0f} ms")
    for out in manifest.outputs:
        print(f"  {out.key}  {out.width}x{out.height}  {out.bytes} bytes")
        print(f"    {bucket.presigned_get(out.key)}")


def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.client import submit_file
    from bucketbrush.store import Bucket

    def show(m: Any) -> None:
        print(f"  {m.status:<9} {m.progress.fraction:6.0%}", file=sys.stderr)

    upload, manifest = submit_file(settings, Path(args.file), args.recipe, _params(args.param),
                                   wait=not args.no_wait, timeout=args.timeout, on_update=show)
    print(f"uploaded {upload.key} -> job {upload.job_id}", file=sys.stderr)
    if manifest is None:
        print(upload.job_id)
        return 0
    bucket = Bucket(settings)
    if args.json:
        print(manifest.model_dump_json(indent=2))
    else:
        _print_manifest(manifest, bucket)
    return 0 if manifest.status == "succeeded" else 1


def _admin(settings: Settings) -> tuple[Any, Any]:
    from bucketbrush.broker import build_broker
    from bucketbrush.store import Bucket

    return Bucket(settings), build_broker(settings)


def cmd_jobs_list(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.management import list_jobs

    bucket, _ = _admin(settings)
    since = time.time() - args.since * 60 if args.since else None
    page = list_jobs(bucket, status=args.status, recipe=args.recipe, since=since, limit=args.limit,
                     cursor=args.cursor)
    for m in page.jobs:
        err = f"  {m.error.code}" if m.error else ""
        when = datetime.fromtimestamp(m.updated_at).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{m.job_id}  {when}  {m.status:<9}  {m.recipe:<10}  {len(m.outputs)} outputs{err}")
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)
    return 0


def cmd_jobs_show(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.management import get_job

    bucket, _ = _admin(settings)
    print(get_job(bucket, args.job_id).model_dump_json(indent=2))
    return 0


def cmd_jobs_download(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.management import download_outputs

    bucket, _ = _admin(settings)
    for path in download_outputs(bucket, args.job_id, Path(args.dest) / args.job_id):
        print(path)
    return 0


def cmd_jobs_delete(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.management import delete_job

    bucket, broker = _admin(settings)
    for key in delete_job(bucket, broker, args.job_id):
        print(f"deleted {key}")
    return 0


def cmd_jobs_retry(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.management import retry_job

    bucket, broker = _admin(settings)
    retry_job(bucket, broker, args.job_id)
    print(f"job {args.job_id} queued again")
    return 0


def cmd_jobs_cancel(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.management import cancel_job

    bucket, _ = _admin(settings)
    manifest = cancel_job(bucket, args.job_id)
    print(f"cancel requested for job {args.job_id} ({manifest.status})")
    return 0


def cmd_gallery(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush import gallery

    bucket, _ = _admin(settings)
    if args.action == "enable":
        gallery.enable_versioning(bucket)
        print(f"versioning enabled on {bucket.name}")
    elif args.action == "deleted":
        for job_id in gallery.list_deleted(bucket):
            print(job_id)
    else:
        if not args.job_id:
            raise SystemExit(f"gallery {args.action} needs a JOB_ID")
        func = {"delete": gallery.soft_delete, "restore": gallery.restore, "purge": gallery.purge}[args.action]
        print(json.dumps(func(bucket, args.job_id)))
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.status import status_report

    bucket, broker = _admin(settings)
    report = status_report(bucket, broker)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    q = report["queue"]
    print(f"queue {q['name']}: {q['ready']} ready, {q['delayed']} waiting to retry, "
          f"{q['dead_lettered']} dead-lettered")
    for r in report["runners"]:
        gpu = f", {r['gpu']['name']}" if r.get("gpu") else ""
        state = "STALE" if r["stale"] else "ok"
        print(f"runner {r['runner_id']} [{state}, {r['age_s']}s ago] {r['device']}{gpu}: "
              f"{r['jobs_done']} done, {r['jobs_failed']} failed, current {r['current_job'] or '-'}, "
              f"models {', '.join(r['loaded_models']) or '-'}")
    if not report["runners"]:
        print("no runners")
    return 0


def cmd_refine(settings: Settings, args: argparse.Namespace) -> int:
    from gpu_runner.refine import refine

    result = refine(args.text, has_image=args.has_image, refiner=args.refiner, settings=settings)
    if args.json:
        print(result.model_dump_json(indent=2))
        return 0
    print(f"intent {result.intent} -> recipe {result.recipe or '-'} ({result.refiner})")
    if result.params:
        print(f"  params {json.dumps(result.params, ensure_ascii=False)}")
    for name in ("prompt", "negative_prompt", "answer", "target"):
        if value := getattr(result, name):
            print(f"  {name}: {value}")
    for warning in result.warnings:
        print(f"  warning: {warning}")
    return 0


def cmd_runner(settings: Settings, args: argparse.Namespace) -> int:
    from gpu_runner.worker import run_worker

    run_worker(settings, ready_file=args.ready_file)
    return 0


def _handler(settings: Settings) -> Any:
    from bucketbrush.broker import build_broker
    from bucketbrush.store import Bucket
    from functions.handler import Handler

    return Handler(settings, Bucket(settings), build_broker(settings))


def _run_event_source(settings: Settings, args: argparse.Namespace, source: Any) -> int:
    """Run an event source (anything with ``run(stop, on_ready=...)``) until SIGTERM/SIGINT,
    with the periodic sweep beside it."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    _start_periodic_sweep(settings, stop)
    ready = args.ready_file
    source.run(stop, on_ready=(lambda: ready.write_text("ready\n")) if ready else None)
    return 0


def cmd_events_seaweedfs(settings: Settings, args: argparse.Namespace) -> int:
    from functions.sources.seaweedfs import Cursor, FilerSubscription

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    cursor = Cursor(args.cursor or settings.state_dir / f"cursor-{settings.bucket}.txt")
    source = FilerSubscription(filer=args.filer, bucket=settings.bucket, cursor=cursor,
                               handle=_handler(settings).handle)
    return _run_event_source(settings, args, source)


def cmd_events_sqs(settings: Settings, args: argparse.Namespace) -> int:
    from functions.sources.sqs import SqsPoller, sqs_client

    queue_url = args.queue_url or settings.sqs_queue_url
    if not queue_url:
        raise SystemExit("no queue: pass --queue-url or set BUCKETBRUSH_SQS_QUEUE_URL")
    sqs = sqs_client(settings, args.endpoint_url or settings.sqs_endpoint_url)
    source = SqsPoller(sqs, queue_url, _handler(settings).handle, wait_time_s=settings.sqs_wait_time_s,
                       visibility_timeout_s=settings.sqs_visibility_timeout_s)
    return _run_event_source(settings, args, source)


def _registry(settings: Settings) -> Any:
    from gpu_runner.models import ModelRegistry

    if not settings.models_file:
        raise SystemExit("no models file: set BUCKETBRUSH_MODELS_FILE to a models TOML (see README, Models)")
    return ModelRegistry.from_toml(settings.models_file)


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    registry = _registry(settings)
    if args.action == "list":
        for model_id, spec in registry.items():
            nets = ", ".join(spec.controlnets) or "-"
            print(f"{model_id:<20} {spec.family:<5} {spec.width}x{spec.height} {spec.scheduler:<9} "
                  f"controlnets: {nets}  {spec.weights.describe()}")
        return 0
    if args.action == "doctor":
        missing = 0
        for report in registry.doctor():
            print(f"{report.id} ({report.family}): {'ok' if report.ok else 'MISSING WEIGHTS'}")
            for c in report.components:
                print(f"  {'ok     ' if c.present else 'missing'} {c.name}: {c.source}")
                if c.hint:
                    print(f"          {c.hint}")
            missing += not report.ok
        return 1 if missing else 0
    from gpu_runner.pipelines import ModelCache

    cache = ModelCache.from_settings(settings)
    for model_id in args.ids or list(registry):
        started = time.perf_counter()
        cache.preload([model_id])
        print(f"{model_id}: loaded in {time.perf_counter() - started:.1f} s ({cache.nbytes / 2**20:.0f} MiB cached)")
    return 0


def cmd_sweep(settings: Settings, args: argparse.Namespace) -> int:
    from functions.sweep import RUNNING_LOOKBACK_S, sweep

    handler = _handler(settings)
    report = sweep(settings, handler.bucket, handler, grace_s=args.grace,
                   running_lookback_s=None if args.full else RUNNING_LOOKBACK_S)
    for o in report.outcomes:
        if o.action == "enqueued":
            print(f"enqueued {o.job_id}  {o.key}")
    print(report.summary())
    return 0


def _start_periodic_sweep(settings: Settings, stop: threading.Event) -> None:
    """The reconciling sweep in a thread of the event source process (0 s interval: off)."""
    if settings.sweep_interval_s <= 0:
        return
    from functions.sweep import run_periodic

    # Its own handler (broker, S3 client): the subscription thread keeps the other.
    sweeper = _handler(settings)
    threading.Thread(target=run_periodic, args=(settings, sweeper, stop), name="sweep", daemon=True,
                     kwargs={"interval_s": settings.sweep_interval_s, "grace_s": settings.sweep_grace_s}).start()


def cmd_serve_functions(settings: Settings, args: argparse.Namespace) -> int:
    from functions.http import serve

    serve(settings, host=args.host, port=args.port)
    return 0


def cmd_infra_minio(settings: Settings, args: argparse.Namespace) -> int:
    from infra.minio import apply_minio, mc_commands, minio_client, webhook_arn

    if args.print_mc:
        print(mc_commands(settings, alias=args.alias, target_id=args.target_id,
                          endpoint=args.webhook_endpoint, region=args.region), end="")
        return 0
    for line in apply_minio(minio_client(settings), settings, arn=webhook_arn(args.target_id, args.region)):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bucketbrush", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the local stack (SeaweedFS, Redis, events, runner)")
    up.add_argument("--runners", type=int, default=1)
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop what `up` started").set_defaults(func=cmd_down)
    sub.add_parser("demo", help="up, run sample jobs end to end, print manifests, down").set_defaults(func=cmd_demo)

    infra = sub.add_parser("infra", help="bucket setup").add_subparsers(dest="infra", required=True)
    infra.add_parser("apply", help="bucket, CORS, lifecycle rules").set_defaults(func=cmd_infra_apply)
    from infra.aws import add_arguments as aws_arguments
    from infra.aws import run as cmd_infra_aws

    aws = infra.add_parser("aws", help="AWS or LocalStack: bucket, S3 -> SQS (or SNS -> SQS) notifications, lifecycle")
    aws_arguments(aws)
    aws.set_defaults(func=cmd_infra_aws)
    mi = infra.add_parser("minio", help="MinIO: bucket, event routes to the webhook target, ILM rules")
    mi.add_argument("--target-id", default="bucketbrush", help="webhook target id (MINIO_NOTIFY_WEBHOOK_*_<ID>)")
    mi.add_argument("--region", default="", help="the server's MINIO_SITE_REGION, if set")
    mi.add_argument("--print-mc", action="store_true", help="print the equivalent mc commands instead")
    mi.add_argument("--alias", default="minio", help="mc alias (with --print-mc)")
    mi.add_argument("--webhook-endpoint", default="http://functions:8080/events/minio")
    mi.set_defaults(func=cmd_infra_minio)

    pre = sub.add_parser("presign", help="a presigned POST for one upload into inbox/<recipe>/")
    pre.add_argument("recipe")
    pre.add_argument("--filename", default="upload.png")
    pre.add_argument("--content-type")
    pre.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    pre.add_argument("--expires", type=int, help="seconds")
    pre.set_defaults(func=cmd_presign)

    sm = sub.add_parser("submit", help="upload a file as a job and wait for its manifest")
    sm.add_argument("file")
    sm.add_argument("--recipe", required=True)
    sm.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    sm.add_argument("--timeout", type=float, default=600)
    sm.add_argument("--no-wait", action="store_true", help="print the job id and return")
    sm.add_argument("--json", action="store_true", help="print the whole manifest")
    sm.set_defaults(func=cmd_submit)

    jobs = sub.add_parser("jobs", help="job management").add_subparsers(dest="jobs", required=True)
    ls = jobs.add_parser("list", help="list jobs, a page at a time")
    ls.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    ls.add_argument("--recipe")
    ls.add_argument("--since", type=float, metavar="MINUTES", help="updated in the last MINUTES")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--cursor", help="continue a listing")
    ls.set_defaults(func=cmd_jobs_list)
    for name, func, text in (
        ("show", cmd_jobs_show, "print a job's manifest"),
        ("delete", cmd_jobs_delete, "delete a finished job with its inputs and outputs"),
        ("retry", cmd_jobs_retry, "run a failed or cancelled job again"),
        ("cancel", cmd_jobs_cancel, "stop a queued or running job"),
    ):
        one = jobs.add_parser(name, help=text)
        one.add_argument("job_id")
        one.set_defaults(func=func)
    dl = jobs.add_parser("download", help="download a job's outputs")
    dl.add_argument("job_id")
    dl.add_argument("--dest", default="downloads")
    dl.set_defaults(func=cmd_jobs_download)
    cancel = sub.add_parser("cancel", help="same as `jobs cancel`")
    cancel.add_argument("job_id")
    cancel.set_defaults(func=cmd_jobs_cancel)

    gal = sub.add_parser("gallery", help="soft delete / restore outputs (bucket versioning)")
    gal.add_argument("action", choices=["enable", "delete", "deleted", "restore", "purge"])
    gal.add_argument("job_id", nargs="?")
    gal.set_defaults(func=cmd_gallery)

    sf = sub.add_parser("serve-functions", help="HTTP: MinIO/S3/SNS event targets, presign, health")
    sf.add_argument("--host", default="127.0.0.1")
    sf.add_argument("--port", type=int, default=8080)
    sf.set_defaults(func=cmd_serve_functions)

    swp = sub.add_parser("sweep", help="enqueue inputs no event announced; fail jobs whose runner died")
    swp.add_argument("--grace", type=float, default=60, help="skip objects younger than this many seconds")
    swp.add_argument("--full", action="store_true", help="check every running manifest, not only recent ones")
    swp.set_defaults(func=cmd_sweep)

    mo = sub.add_parser("models", help="the diffusion models file: list, doctor, preload")
    mo.add_argument("action", choices=["list", "doctor", "preload"])
    mo.add_argument("ids", nargs="*", help="model ids (preload; default: all)")
    mo.set_defaults(func=cmd_models)

    st = sub.add_parser("status", help="runners (heartbeats) and queue depths")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    rf = sub.add_parser("refine", help="a plain-language request -> intent, recipe, params and prompt")
    rf.add_argument("text")
    rf.add_argument("--has-image", action="store_true", help="the request is about a picture the user has")
    rf.add_argument("--refiner", choices=["rules", "local", "openai"], help="default: BUCKETBRUSH_REFINER (rules)")
    rf.add_argument("--json", action="store_true")
    rf.set_defaults(func=cmd_refine)

    run = sub.add_parser("runner", help="run a runner process (Dramatiq worker)")
    run.add_argument("--ready-file", type=Path)
    run.set_defaults(func=cmd_runner)

    ev = sub.add_parser("events", help="run an event source").add_subparsers(dest="source", required=True)
    sw = ev.add_parser("seaweedfs", help="follow the SeaweedFS filer's metadata log")
    sw.add_argument("--filer", required=True, help="filer HOST:PORT")
    sw.add_argument("--cursor", type=Path, help="cursor file (default: in the state dir)")
    sw.add_argument("--ready-file", type=Path)
    sw.set_defaults(func=cmd_events_seaweedfs)
    sq = ev.add_parser("sqs", help="long-poll an SQS queue fed by S3 (or SNS) notifications")
    sq.add_argument("--queue-url", help="default: BUCKETBRUSH_SQS_QUEUE_URL")
    sq.add_argument("--endpoint-url", help="SQS endpoint (LocalStack); default: BUCKETBRUSH_SQS_ENDPOINT_URL, else AWS")
    sq.add_argument("--ready-file", type=Path)
    sq.set_defaults(func=cmd_events_sqs)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("botocore").setLevel(logging.WARNING)
    try:
        return args.func(Settings(), args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line; -v shows the traceback
        if args.verbose:
            raise
        code, message = describe_error(exc)
        print(f"error [{code}]: {message}", file=sys.stderr)
        return 2


def describe_error(exc: BaseException) -> tuple[str, str]:
    """A stable code and one line for people, for any exception a command can end with."""
    import botocore.exceptions
    import pydantic
    import redis
    import urllib3

    from infra.procs import StackError

    def first_line(text: object) -> str:
        lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
        return lines[0] if lines else type(exc).__name__

    if isinstance(exc, BucketbrushError):
        return exc.code, first_line(exc)
    if isinstance(exc, StackError):
        return "stack_error", first_line(exc)
    if isinstance(exc, pydantic.ValidationError):
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
        return "invalid_settings", f"{where}: {errors[0]['msg']}" if errors else first_line(exc)
    if isinstance(exc, redis.RedisError):
        return "broker_unavailable", f"Redis did not answer ({first_line(exc)}); is the stack up? (`bucketbrush up`)"
    if isinstance(exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError):
        return "store_unavailable", (f"the S3 store did not answer at {exc.kwargs.get('endpoint_url', '?')}; "
                                     "is the stack up? (`bucketbrush up`)")
    if isinstance(exc, urllib3.exceptions.NewConnectionError | urllib3.exceptions.MaxRetryError
                  | urllib3.exceptions.TimeoutError):
        return "store_unavailable", (f"the S3 store did not answer ({first_line(exc)}); "
                                     "is the stack up? (`bucketbrush up`)")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "store_unavailable", ("no S3 credentials: start the local stack (`bucketbrush up`) "
                                     "or set BUCKETBRUSH_S3_*")
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        return "store_error", f"the store answered {err.get('Code', '?')}: {err.get('Message') or first_line(exc)}"
    if isinstance(exc, FileNotFoundError):
        return "not_found", f"no such file: {exc.filename or first_line(exc)}"
    if isinstance(exc, PermissionError | IsADirectoryError | NotADirectoryError):
        return "file_error", f"{exc.strerror}: {exc.filename}"
    if isinstance(exc, TimeoutError):
        return "timed_out", first_line(exc)
    if isinstance(exc, ValueError):
        return "invalid_argument", first_line(exc)
    return "internal_error", f"{type(exc).__name__}: {first_line(exc)} (run with -v for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
