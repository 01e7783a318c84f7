"""The ``bucketbrush`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
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

    LocalStack(settings).up(runners=args.runners, report=print, new_credentials=args.new_credentials)
    print("clients: `eval $(bucketbrush env)` exports the endpoint and keys (kept across down/up)")
    return 0


def cmd_env(settings: Settings, args: argparse.Namespace) -> int:
    """``export`` lines for the local stack's endpoint and keys (bucketbrush, the AWS CLI, boto3)."""
    import shlex

    from infra.local import LocalStack

    local = LocalStack(settings)
    state = local.read_state()
    if state is not None and state.is_running():
        values = {"endpoint": state.s3_endpoint_url, "access": state.s3_access_key, "secret": state.s3_secret_key,
                  "redis": state.redis_url, "namespace": state.broker_namespace}
    else:
        identity = local.read_identity()
        if not identity:
            raise SystemExit(f"no local stack in {local.state_dir}: `bucketbrush up` starts one")
        port = identity["seaweedfs_ports"]["s3"]
        values = {"endpoint": f"http://127.0.0.1:{port}", "access": identity["s3_access_key"],
                  "secret": identity["s3_secret_key"],
                  "redis": f"redis://127.0.0.1:{identity['redis_port']}/0" if "redis_port" in identity else None,
                  "namespace": None}
        print("# the stack is not running; `bucketbrush up` starts it with these (unless a port is taken)",
              file=sys.stderr)
    lines = {
        "BUCKETBRUSH_S3_ENDPOINT_URL": values["endpoint"], "BUCKETBRUSH_S3_ACCESS_KEY": values["access"],
        "BUCKETBRUSH_S3_SECRET_KEY": values["secret"], "BUCKETBRUSH_BUCKET": settings.bucket,
        "BUCKETBRUSH_REDIS_URL": values["redis"], "BUCKETBRUSH_BROKER_NAMESPACE": values["namespace"],
        # The AWS CLI and boto3 (1.28+) read these.
        "AWS_ENDPOINT_URL_S3": values["endpoint"], "AWS_ACCESS_KEY_ID": values["access"],
        "AWS_SECRET_ACCESS_KEY": values["secret"], "AWS_DEFAULT_REGION": settings.s3_region,
    }
    for name, value in lines.items():
        if value:
            print(f"export {name}={shlex.quote(str(value))}")
    return 0


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    from infra.local import LocalStack

    LocalStack(settings).down(report=print)
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from infra.demo import run_demo

    return run_demo(settings, show=print_manifest, show_turn=print_turn)


def cmd_infra_apply(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.store import s3_client
    from infra.bucket import apply_bucket

    for line in apply_bucket(s3_client(settings), settings):
        print(line)
    return 0


def params_validator(settings: Settings) -> Any:
    """The runner's own recipe and params validation, injected into presign, submit and the
    HTTP host: one validation, and the core never imports the runner."""
    from functools import partial

    from gpu_runner.recipes import validate_params

    return partial(validate_params, testing=settings.test_recipes)


def cmd_presign(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.presign import presign_upload
    from bucketbrush.store import s3_client

    upload = presign_upload(
        s3_client(settings, public=True), settings, recipe=args.recipe, filename=args.filename,
        content_type=args.content_type, params=_params(args.param), expires_s=args.expires,
        validate=params_validator(settings),
        webhook=args.webhook, webhook_events=args.webhook_event or None, conversation=args.conversation,
    )
    print(upload.model_dump_json(indent=2))
    return 0


def cmd_presign_get(settings: Settings, args: argparse.Namespace) -> int:
    """A fresh presigned GET: for a job's manifest (and its outputs once it succeeded), or a key."""
    from bucketbrush.store import Bucket

    bucket = Bucket(settings)
    if "/" in args.target:
        print(bucket.presigned_get(args.target, args.expires))
        return 0
    link, manifest = bucket.manifest_link(args.target, args.expires)
    if manifest is None:
        print(f"note: job {args.target} has no manifest yet; the link works once it does", file=sys.stderr)
    print(link.model_dump_json(indent=2))
    return 0


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Content Credentials of a local file or a bucket key: 0 valid, 1 invalid or none."""
    import mimetypes

    from bucketbrush.credentials import describe, read_credentials, trust_anchors

    path = Path(args.target)
    if path.exists():
        data, mime = path.read_bytes(), mimetypes.guess_type(path.name)[0]
    else:
        from bucketbrush.store import Bucket

        bucket = Bucket(settings)
        obj = bucket.s3.get_object(Bucket=bucket.name, Key=args.target)
        data, mime = obj["Body"].read(), obj.get("ContentType")
    report = read_credentials(data, mime, anchors=trust_anchors(settings))
    if args.json:
        print(json.dumps(report.to_dict() if report else None, indent=2))
    else:
        print(f"{args.target} ({mime or 'unknown type'}, {len(data):,} bytes)")
        print("\n".join(describe(report)))
    return 0 if report and report.validation_state in ("Valid", "Trusted") else 1


def print_manifest(manifest: Any, bucket: Any) -> None:
    """A final (or current) manifest for people: status, timing, errors, warnings, outputs
    with presigned GET links."""
    params = json.dumps(manifest.params, separators=(",", ":")) if manifest.params else ""
    print(f"job {manifest.job_id}: {manifest.status} ({manifest.recipe} {params})".replace(" )", ")"))
    facts = [f"{'turn' if manifest.turn else 'input'} {manifest.inputs[0].key}"] if manifest.inputs else []
    if "processing_s" in manifest.timings:
        facts.append(f"processing {manifest.timings['processing_s'] * 1000:.0f} ms")
    if facts:
        print("  " + ", ".join(facts))
    if manifest.error:
        print(f"  error {manifest.error.code}: {manifest.error.message}")
    for warning in manifest.warnings:
        print(f"  warning: {warning}")
    for out in manifest.outputs:
        size = f"  {out.width}x{out.height}" if out.width else ""
        cc = out.content_credentials
        signed = (f"  C2PA {cc.validation_state}" if cc and cc.signed else "  unsigned" if cc else "")
        print(f"  -> {out.key}{size}  {out.bytes:,} bytes{signed}")
        print(f"     {bucket.presigned_get(out.key)}")


def cmd_submit(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.client import Studio
    from bucketbrush.progress import JobProgress

    studio = Studio.from_settings(settings, validate=params_validator(settings))
    job = studio.submit(Path(args.file), args.recipe, **_params(args.param))
    print(f"uploaded {job.upload.key} -> job {job.job_id}", file=sys.stderr)
    if args.no_wait:
        print(job.job_id)
        return 0
    with JobProgress(job.job_id) as progress:
        manifest = job.wait(args.timeout, on_progress=progress)
    if args.json:
        print(manifest.model_dump_json(indent=2))
    else:
        print_manifest(manifest, studio.bucket)
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
    if not page.jobs:
        print("no jobs" + (" match" if args.status or args.recipe or args.since else ""), file=sys.stderr)
    for m in page.jobs:
        err = f"  {m.error.code}" if m.error else ""
        when = datetime.fromtimestamp(m.updated_at).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{m.job_id}  {when}  {m.status:<9}  {m.recipe:<10}  {len(m.outputs)} outputs{err}")
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)
    return 0


def cmd_jobs_reindex(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.management import reindex_jobs

    bucket, _ = _admin(settings)
    print(f"indexed {_count(reindex_jobs(bucket), 'job')} from {bucket.layout.manifests}")
    return 0


def cmd_jobs_show(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.management import get_job

    bucket, _ = _admin(settings)
    print(get_job(bucket, args.job_id).model_dump_json(indent=2))
    return 0


def cmd_jobs_download(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.client import Studio
    from bucketbrush.progress import ByteProgress

    job = Studio.from_settings(settings).job(args.job_id)
    with ByteProgress(f"job {args.job_id[:12]}") as progress:
        paths = job.download(Path(args.dest) / args.job_id, on_progress=progress)
    print(f"downloaded {_count(len(paths), 'output')} of job {args.job_id}:", file=sys.stderr)
    for path in paths:
        print(path)
    return 0


def cmd_jobs_delete(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.management import delete_job

    bucket, broker = _admin(settings)
    keys = delete_job(bucket, broker, args.job_id)
    print(f"deleted job {args.job_id}: {_count(len(keys), 'object')}")
    for key in keys:
        print(f"  {key}")
    return 0


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


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
        print(f"versioning enabled on {bucket.name}: deletes now leave restorable versions")
        return 0
    if args.action == "deleted":
        deleted = gallery.list_deleted(bucket)
        print(f"{_count(len(deleted), 'soft-deleted job')}" + (":" if deleted else ""), file=sys.stderr)
        for job_id in deleted:
            print(job_id)
        return 0
    if not args.job_id:
        raise SystemExit(f"gallery {args.action} needs a JOB_ID")
    job_id = args.job_id
    if args.action == "purge":
        count = gallery.purge(bucket, job_id)
        print(f"purged job {job_id}: {_count(count, 'object version')} and delete markers removed for good")
        return 0
    if args.action == "delete":
        keys = gallery.soft_delete(bucket, job_id)
        print(f"soft-deleted job {job_id}: {_count(len(keys), 'object')} hidden behind delete markers "
              f"(`bucketbrush gallery restore {job_id}` brings them back)")
    else:
        keys = gallery.restore(bucket, job_id)
        print(f"restored job {job_id}: {_count(len(keys), 'object')}")
    for key in keys:
        print(f"  {key}")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.status import status_report
    from infra.local import LocalStack

    bucket, broker = _admin(settings)
    report = status_report(bucket, broker)
    local = LocalStack(settings)
    state = local.read_state()
    report["local_stack"] = None if state is None else {
        "state_file": str(local.state_file),
        "processes": [{"name": p.name, "pid": p.pid, "running": p.alive(), "log": p.log} for p in state.processes]}
    if state is not None:
        report["ok"] = report["ok"] and all(p["running"] for p in report["local_stack"]["processes"])
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    store, brk = report["store"], report["broker"]
    print(f"store   {store['endpoint']} bucket {store['bucket']}: "
          + ("ok" if store["reachable"] else f"UNREACHABLE ({store['error']})"))
    print(f"broker  {brk['url']} namespace {brk['namespace']}: "
          + ("ok" if brk["reachable"] else f"UNREACHABLE ({brk['error']})"))
    if (q := report["queue"]) and "ready" in q:
        dead = " (`bucketbrush jobs dead list`)" if q["dead_lettered"] else ""
        print(f"queue   {q['name']}-*: {q['ready']} ready, {q['delayed']} waiting to retry, "
              f"{q['dead_lettered']} dead-lettered{dead}")
        for name, d in report["queues"].items():
            if any(d.values()):
                print(f"  {name}: {d['ready']} ready, {d['delayed']} waiting to retry, {d['dead_lettered']} dead")
    if report["local_stack"]:
        procs = ", ".join(f"{p['name']} {'running' if p['running'] else 'STOPPED'} (pid {p['pid']})"
                          for p in report["local_stack"]["processes"])
        print(f"local stack ({report['local_stack']['state_file']}): {procs}")
    for src in report["event_sources"]:
        last = (f", last event {time.time() - src['last_event_at']:.0f}s ago" if src.get("last_event_at")
                else ", no event yet")
        print(f"events  {src['kind']} {src['source_id']} [{'STALE' if src['stale'] else 'ok'}, "
              f"{src['age_s']}s ago]: {src['records']} records, {src['enqueued']} jobs enqueued{last}")
    if store["reachable"] and not report["event_sources"]:
        print("events  no event source heartbeat (HTTP hosts and Lambdas publish none; "
              "`bucketbrush sweep` recovers lost events)")
    for r in report["runners"]:
        gpu = f", {r['gpu']['name']}" if r.get("gpu") else ""
        gpu += f", CUDA_VISIBLE_DEVICES={r['visible_devices']}" if r.get("visible_devices") is not None else ""
        state_word = "STALE" if r["stale"] else "ok"
        print(f"runner  {r['runner_id']} [{state_word}, {r['age_s']}s ago] {r['device']}{gpu}: "
              f"{r['jobs_done']} done, {r['jobs_failed']} failed, current {r['current_job'] or '-'}, "
              f"models {', '.join(r['loaded_models']) or '-'}, queues {r['queue']}")
    if store["reachable"] and not report["runners"]:
        print("runner  none")
    if report["pruned"]:
        print(f"removed {_count(len(report['pruned']), 'heartbeat')} not updated for over "
              f"{settings.heartbeat_expire_s:.0f}s: {', '.join(report['pruned'])}")
    return 0 if report["ok"] else 1


def cmd_jobs_dead(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush import deadletters

    bucket, broker = _admin(settings)
    ids = args.ids or None
    if args.action == "list":
        letters = deadletters.list_dead(broker, settings)
        print(f"{_count(len(letters), 'dead-lettered message')} in {settings.queue_name}-*"
              + (":" if letters else ""), file=sys.stderr)
        for d in letters:
            when = datetime.fromtimestamp(d.dead_at).strftime("%Y-%m-%d %H:%M:%S")
            m = bucket.read_manifest(d.job_id) if d.job_id else None
            state = f"{m.status}{' ' + m.error.code if m.error else ''}" if m else "no manifest"
            print(f"{d.message_id}  {when}  job {d.job_id or '?'}  {d.recipe or '?':<10}  {state}")
        return 0
    if not ids and not args.all:
        raise SystemExit(f"jobs dead {args.action} needs message or job ids, or --all")
    if args.action == "purge":
        dropped = deadletters.purge_dead(broker, settings, ids)
        print(f"purged {_count(len(dropped), 'dead-lettered message')}")
        return 0
    done = deadletters.retry_dead(bucket, broker, ids)
    for letter, what in done:
        print(f"job {letter.job_id or '?'} (message {letter.message_id}): {what}")
    if not done:
        print("no dead-lettered messages")
    return 0


def cmd_settings(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.settings import GROUPS, explain

    groups = explain(settings)
    if args.json:
        print(json.dumps(groups, indent=2))
        return 0

    def text(value: Any) -> str:
        return "unset" if value is None else value if isinstance(value, str) else json.dumps(value)

    entries = [(name, e) for fields in groups.values() for name, e in fields.items()]
    width = max(len(name) for name, _ in entries)
    column = min(max(len(text(e["value"])) for _, e in entries), 40)
    for group, fields in groups.items():
        print(f"[{group}] {(GROUPS[group].__doc__ or '').splitlines()[0]}")
        for name, e in fields.items():
            origin = e["source"] + (f": {e['from']}" if e["from"] else "")
            print(f"  {name:<{width}} = {text(e['value']):<{column}}  ({origin})")
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


def cmd_chat(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.client import Studio
    from bucketbrush.progress import JobProgress

    bucket, _ = _admin(settings)
    chat = Studio(settings, bucket).conversation(args.conversation)
    turn = chat.say(args.message, image=args.image)
    print(f"sent {turn.key} -> job {turn.job_id}", file=sys.stderr)
    with JobProgress(turn.job_id) as progress:
        manifest = turn.wait(args.timeout, on_progress=progress)
    if args.json:
        print(manifest.model_dump_json(indent=2))
        return 0 if manifest.status == "succeeded" else 1
    print_turn(manifest, turn.conversation or chat.history(), bucket)
    print(f'continue: bucketbrush chat --conversation {chat.conversation_id} "..."')
    return 0 if manifest.status == "succeeded" else 1


def print_turn(manifest: Any, conversation: Any, bucket: Any) -> None:
    """A chat turn's final job manifest for people: what the refiner made of the message, the
    job, and the conversation's current picture."""
    turn = manifest.turn
    print(f"conversation {conversation.conversation_id}, turn {turn.seq}: {turn.message!r} -> "
          f"{turn.intent or 'recipe ' + manifest.recipe} ({turn.refiner or 'no'} refiner)")
    if turn.prompt:
        print(f"  refined prompt: {turn.prompt}")
    if turn.answer:
        print(f"  answer: {turn.answer}")
    if turn.input:
        print(f"  {'back to' if turn.intent == 'undo' else 'on'} picture {turn.input}")
    print_manifest(manifest, bucket)
    if conversation.image and conversation.image not in {o.key for o in manifest.outputs}:
        print(f"  current picture: {conversation.image}\n     {bucket.presigned_get(conversation.image)}")


def cmd_conversations(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush import conversations, gallery

    bucket, broker = _admin(settings)
    if args.action == "list":
        for conversation in conversations.list_conversations(bucket):
            print(conversation)
        return 0
    if args.action == "deleted":
        for conversation in gallery.deleted_conversations(bucket):
            print(conversation)
        return 0
    if not args.conversation:
        raise SystemExit(f"conversations {args.action} needs a CONVERSATION id")
    if args.action == "show":
        print(conversations.Conversations(bucket, None).get(args.conversation).model_dump_json(indent=2))
        return 0
    if args.action == "delete":
        keys, done = conversations.delete_conversation(bucket, broker, args.conversation), "deleted"
    elif args.action == "trash":
        keys, done = gallery.soft_delete_conversation(bucket, args.conversation), "soft-deleted"
    else:
        keys, done = gallery.restore_conversation(bucket, args.conversation), "restored"
    print(f"{done} conversation {args.conversation}: {_count(len(keys), 'object')}")
    for key in keys:
        print(f"  {key}")
    return 0


def cmd_runner(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.routing import served_capabilities
    from gpu_runner.worker import run_worker

    update: dict[str, Any] = {}
    if args.serve is not None:
        update["runner_serve"] = served_capabilities(args.serve.split(","))
    if args.devices is not None:
        update["runner_devices"] = args.devices
    settings = settings.model_copy(update=update)
    if settings.runner_devices:
        from gpu_runner.supervisor import run_per_device

        return run_per_device(settings, ready_file=args.ready_file)
    run_worker(settings, ready_file=args.ready_file)
    return 0


def cmd_events_seaweedfs(settings: Settings, args: argparse.Namespace) -> int:
    from functions.handler import Handler
    from functions.service import run_event_source, seaweedfs_source

    handler = Handler.from_settings(settings)
    run_event_source(settings, seaweedfs_source(settings, filer=args.filer, cursor=args.cursor, handler=handler),
                     ready_file=args.ready_file, kind="seaweedfs", handler=handler)
    return 0


def cmd_events_sqs(settings: Settings, args: argparse.Namespace) -> int:
    from functions.service import run_event_source, sqs_source

    queue_url = args.queue_url or settings.sqs_queue_url
    if not queue_url:
        raise SystemExit("no queue: pass --queue-url or set BUCKETBRUSH_SQS_QUEUE_URL")
    from functions.handler import Handler

    handler = Handler.from_settings(settings)
    run_event_source(settings, sqs_source(settings, queue_url=queue_url, endpoint_url=args.endpoint_url,
                                          handler=handler),
                     ready_file=args.ready_file, kind="sqs", handler=handler)
    return 0


def cmd_watch(settings: Settings, args: argparse.Namespace) -> int:
    import signal
    import threading

    from bucketbrush.errors import ConfigError
    from bucketbrush.store import Bucket
    from functions.watch import ManifestWatch, human_line, seaweedfs_watch, sqs_watch
    from infra.local import LocalStack

    bucket = Bucket(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    last: list[Any] = []

    def emit(manifest: Any) -> None:
        last[:] = [manifest]
        print(manifest.model_dump_json() if args.json else human_line(manifest), flush=True)

    # Without --job, only what changes from now on (the subscription replays a few seconds).
    watch = ManifestWatch(bucket, emit, stop, job=args.job, recipe=args.recipe, final=args.final,
                          since=None if args.job else time.time())
    queue_url = args.queue_url or settings.manifests_queue_url
    if queue_url:
        source, where = sqs_watch(settings, watch, queue_url=queue_url, endpoint_url=args.endpoint_url), queue_url
    else:
        state = LocalStack(settings).read_state()
        filer = args.filer or (state.filer if state else None)
        if not filer:
            raise ConfigError("nothing to watch: pass --queue-url (AWS: see `infra aws --manifests-queue`), "
                              "--filer HOST:PORT, or start the local stack (`bucketbrush up`)")
        source, where = seaweedfs_watch(settings, watch, filer=filer, state=settings.state_dir), f"filer {filer}"
    ready = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,), kwargs={"on_ready": ready.set}, daemon=True)
    thread.start()
    ready.wait()
    print(f"watching {bucket.layout.manifests} of {settings.bucket} on {where}", file=sys.stderr, flush=True)
    if args.job:
        watch.check(args.job)  # already over, or changed before the first event
    while not stop.wait(0.5):
        if not thread.is_alive():
            break
    stop.set()
    thread.join(30)
    if args.job:
        return 0 if last and last[0].status == "succeeded" else 1
    return 0


def cmd_webhooks(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.broker import build_broker
    from bucketbrush.store import Bucket
    from bucketbrush.webhooks import disabled_key, read_deliveries, run_webhook_worker

    if args.action in ("show", "enable") and not args.arg:
        raise SystemExit(f"webhooks {args.action} needs {'a job id' if args.action == 'show' else 'a URL'}")
    if args.action == "worker":
        run_webhook_worker(settings, threads=args.threads, ready_file=args.ready_file)
        return 0
    if args.action == "show":
        print(json.dumps(read_deliveries(Bucket(settings), args.arg) or {"job_id": args.arg, "deliveries": []},
                         indent=2))
        return 0
    redis = build_broker(settings).client
    key = disabled_key(settings)
    if args.action == "enable":
        print(f"{args.arg}: {'enabled again' if redis.srem(key, args.arg) else 'was not disabled'}")
        return 0
    subs = [{"url": s.url, "events": s.events, "recipes": s.recipes} for s in settings.webhook_subscriptions]
    print(json.dumps({"subscriptions": subs, "per_job_secret": settings.webhook_job_secret is not None,
                      "disabled": sorted(u.decode() for u in redis.smembers(key))}, indent=2))
    return 0


def _registry(settings: Settings) -> Any:
    from gpu_runner.models import ModelRegistry

    if not settings.models_file:
        raise SystemExit("no models file: copy infra/models.example.toml and set BUCKETBRUSH_MODELS_FILE to it, "
                         "in the environment or in .env (README, section Models)")
    return ModelRegistry.from_toml(settings.models_file)


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    registry = _registry(settings)
    if args.action == "list":
        for model_id, spec in registry.items():
            if getattr(spec, "provider", None):
                print(f"{model_id:<20} remote {spec.width}x{spec.height} {spec.provider} {spec.remote_model}")
                continue
            nets = ", ".join(spec.controlnets) or "-"
            print(f"{model_id:<20} {spec.family:<5} {spec.width}x{spec.height} {spec.scheduler:<9} "
                  f"controlnets: {nets}  {spec.weights.describe()}"
                  + (f"  fallback: {spec.fallback.provider}:{spec.fallback.remote_model}" if spec.fallback else ""))
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
    from functions.handler import Handler
    from functions.sweep import RUNNING_LOOKBACK_S, input_prefixes, reconcile

    handler = Handler.from_settings(settings)
    try:
        input_prefixes(handler.bucket, args.under)  # before any request: a typo is no empty pass
    except ValueError as exc:
        raise SystemExit(f"sweep --under: {exc}") from None
    report = reconcile(settings, handler.bucket, handler, grace_s=args.grace, under=args.under,
                       running_lookback_s=None if args.full else RUNNING_LOOKBACK_S)
    for o in report.outcomes:
        if o.action == "enqueued":
            print(f"enqueued {o.job_id}  {o.key}")
    print(report.summary())
    return 0


def cmd_serve_functions(settings: Settings, args: argparse.Namespace) -> int:
    from functions.http import serve
    from gpu_runner.recipes import catalog

    # The functions never import the runner: the recipe schemas the studio page's forms are
    # made from are computed here, in the composition root, and handed to the app.
    serve(settings, host=args.host, port=args.port, validate=params_validator(settings),
          recipes=catalog(testing=settings.test_recipes))
    return 0


def cmd_studio_publish(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.store import s3_client
    from infra.studio import public_read_policy, publish_studio

    s3 = s3_client(settings)
    for key in publish_studio(s3, settings, prefix=args.prefix, api=args.api):
        print(f"uploaded {key}")
    policy = json.dumps(public_read_policy(settings, args.prefix))
    if args.public:
        s3.put_bucket_policy(Bucket=settings.bucket, Policy=policy)
        print(f"bucket policy: anyone may read {args.prefix}*")
    else:
        print(f"anonymous reads need a bucket policy (or --public): {policy}")
    return 0


def cmd_infra_minio(settings: Settings, args: argparse.Namespace) -> int:
    from infra.minio import apply_minio, mc_commands, minio_client, webhook_arn

    if args.print_mc:
        print(mc_commands(settings, alias=args.alias, target_id=args.target_id,
                          endpoint=args.webhook_endpoint, region=args.region, manifests_arn=args.manifests_arn), end="")
        return 0
    for line in apply_minio(minio_client(settings), settings, arn=webhook_arn(args.target_id, args.region),
                            manifests_arn=args.manifests_arn):
        print(line)
    return 0


# -- tenants and replay (bucketbrush/tenants.py, bucketbrush/quotas.py, bucketbrush/replay.py) --

def _identities(settings: Settings) -> Any:
    """The local stack's SeaweedFS identities; None where no local stack runs (AWS, MinIO)."""
    from infra.local import LocalStack
    from infra.tenants import SeaweedIdentities

    state = LocalStack(settings).read_state()
    return SeaweedIdentities(settings, state.seaweedfs_master) if state and state.seaweedfs_master else None


def _print_credentials(settings: Settings, tenant: str, token: str, creds: Any, args: argparse.Namespace) -> None:
    """A tenant's new secrets, shown this once: its functions token, and its store keys (None
    where no local stack made them)."""
    from bucketbrush.layout import Layout

    prefix = Layout(settings).for_tenant(tenant).space
    keys = {"access_key": creds.access_key, "secret_key": creds.secret_key} if creds else {}
    if args.json:
        print(json.dumps({"tenant": tenant, "prefix": prefix, "bucket": settings.bucket, "functions_token": token,
                          **keys}))
        return
    print(f"# tenant {tenant}: s3://{settings.bucket}/{prefix} only; the secrets are shown this once",
          file=sys.stderr)
    lines = [("BUCKETBRUSH_TENANT", tenant), ("BUCKETBRUSH_FUNCTIONS_TOKEN", token)]
    if creds:
        lines += [("BUCKETBRUSH_S3_ACCESS_KEY", creds.access_key), ("BUCKETBRUSH_S3_SECRET_KEY", creds.secret_key),
                  ("AWS_ACCESS_KEY_ID", creds.access_key), ("AWS_SECRET_ACCESS_KEY", creds.secret_key)]
    for name, value in lines:
        print(f"export {name}={value}")


def cmd_tenants_add(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.errors import InvalidState
    from bucketbrush.tenants import Limits, Tenant, TenantsFile, new_token

    registry = TenantsFile.from_settings(settings)
    if registry.get(args.name):
        raise InvalidState(f"tenant {args.name!r} exists (new keys: `bucketbrush tenants rotate {args.name}`)")
    limits = Limits(jobs_per_hour=args.jobs_per_hour, max_concurrent=args.max_concurrent,
                    input_bytes_per_day=args.input_bytes_per_day,
                    recipes=args.recipes.split(",") if args.recipes else None)
    token, digest = new_token()
    tenant = Tenant(name=args.name, limits=limits, token_sha256=digest)
    registry.put(tenant)  # checks the name before any identity is made
    identities = _identities(settings)
    creds = None
    if identities is None:
        print(f"tenant {args.name} added to {registry.path}; no local stack, so no store identity was made: "
              f"attach `bucketbrush tenants policy {args.name}` to its IAM (or MinIO) user, and run "
              "`bucketbrush infra apply` and `infra aws|minio` again (its retention rules and event routes)",
              file=sys.stderr)
    else:
        from infra.seaweedfs import apply_retention

        creds = identities.put(args.name)
        registry.put(tenant.model_copy(update={"access_key": creds.access_key}))
        apply_retention(identities.master, settings)  # its prefixes' TTLs (the store's events cover every key)
    _print_credentials(settings, args.name, token, creds, args)
    return 0


def cmd_tenants_rotate(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.tenants import TenantsFile, new_token

    registry = TenantsFile.from_settings(settings)
    tenant = registry.require(args.name)
    identities = _identities(settings)
    # The old keys and token stop working now (elsewhere than the local stack, rotate the
    # store keys in the IAM or MinIO user).
    creds = identities.put(args.name) if identities else None
    token, digest = new_token()
    registry.put(tenant.model_copy(update={"access_key": creds.access_key if creds else tenant.access_key,
                                           "token_sha256": digest, "rotated_at": time.time()}))
    _print_credentials(settings, args.name, token, creds, args)
    return 0


def cmd_tenants_remove(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.tenants import TenantsFile

    registry = TenantsFile.from_settings(settings)
    registry.require(args.name)
    if (identities := _identities(settings)) is not None:
        identities.remove(args.name)
    registry.remove(args.name)
    print(f"tenant {args.name} removed: its keys no longer work; its objects stay under "
          f"{settings.tenants_prefix}{args.name}/ until retention expires them", file=sys.stderr)
    return 0


def cmd_tenants_list(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.broker import build_broker
    from bucketbrush.quotas import Quotas
    from bucketbrush.tenants import TenantsFile

    tenants = TenantsFile.from_settings(settings).all()
    quotas = Quotas(build_broker(settings).client, settings)
    rows = []
    for tenant in tenants.values():
        limits, usage = tenant.limits.resolved(settings), quotas.usage(tenant.name)
        rows.append({"tenant": tenant.name, "access_key": tenant.access_key, "limits": limits.model_dump(),
                     "usage": {"jobs_this_hour": usage.jobs_this_hour, "active": usage.active,
                               "input_bytes_today": usage.input_bytes_today}})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no tenants (add one: `bucketbrush tenants add NAME`)", file=sys.stderr)

    def of(used: int, limit: int | None) -> str:
        return f"{used}/{limit}" if limit else f"{used}/-"

    for r in rows:
        lim, use = r["limits"], r["usage"]
        print(f"{r['tenant']:<16} {r['access_key'] or '-':<20} jobs/h {of(use['jobs_this_hour'], lim['jobs_per_hour'])}"
              f"  active {of(use['active'], lim['max_concurrent'])}"
              f"  bytes/day {of(use['input_bytes_today'], lim['input_bytes_per_day'])}"
              f"  recipes {','.join(lim['recipes']) or 'all'}")
    return 0


def cmd_tenants_policy(settings: Settings, args: argparse.Namespace) -> int:
    from infra.tenants import assume_role_kwargs, iam_policy, session_policy

    if args.role_arn:
        print(json.dumps(assume_role_kwargs(settings, args.name, args.role_arn), indent=2))
    elif args.session:
        print(session_policy(settings, args.name))
    else:
        print(json.dumps(iam_policy(settings, args.name), indent=2))
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from bucketbrush.replay import finish_replay, select_jobs, start_replay, table
    from bucketbrush.store import Bucket

    bucket = Bucket(settings)
    job_ids = [j for j in (args.jobs or "").split(",") if j]
    manifests = select_jobs(bucket, prefix=args.prefix, job_ids=job_ids)
    if not manifests:
        print(f"no jobs to replay under {args.prefix}", file=sys.stderr)
        return 1
    selection = {"prefix": args.prefix} if args.prefix else {"jobs": job_ids}
    report = start_replay(bucket, manifests, recipe=args.recipe, overrides=_params(args.param or []),
                          model=args.model, selection=selection)
    queued = sum(p.new_job_id is not None for p in report.jobs)
    print(f"replay {report.replay_id}: {queued} of {len(manifests)} job(s) submitted; waiting", file=sys.stderr)
    report = finish_replay(bucket, report, timeout_s=args.timeout)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print("\n".join(table(report, bucket.layout.replay_key(report.replay_id))))
    return 0 if all(p.status == "succeeded" for p in report.jobs if p.new_job_id) else 1


def add_tenant_commands(sub: Any) -> None:
    te = sub.add_parser("tenants", help="tenants: add, list, rotate, remove, policy").add_subparsers(
        dest="tenants", required=True)
    add = te.add_parser("add", help="a tenant under tenants/NAME/ with its own keys (local stack) and limits")
    add.add_argument("name")
    add.add_argument("--jobs-per-hour", type=int)
    add.add_argument("--max-concurrent", type=int)
    add.add_argument("--input-bytes-per-day", type=int)
    add.add_argument("--recipes", help="comma-separated recipes the tenant may run (default: all)")
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=cmd_tenants_add)
    rot = te.add_parser("rotate", help="new keys for a tenant; the old ones stop working")
    rot.add_argument("name")
    rot.add_argument("--json", action="store_true")
    rot.set_defaults(func=cmd_tenants_rotate)
    rm = te.add_parser("remove", help="remove a tenant's keys and entry (its objects stay)")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_tenants_remove)
    ls = te.add_parser("list", help="tenants, their limits and what they used")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_tenants_list)
    po = te.add_parser("policy", help="AWS/MinIO: the IAM policy (or session policy) confining a tenant")
    po.add_argument("name")
    po.add_argument("--session", action="store_true", help="the compact session policy for sts:AssumeRole")
    po.add_argument("--role-arn", help="print sts.assume_role arguments for this role")
    po.set_defaults(func=cmd_tenants_policy)

    rp = sub.add_parser("replay", help="re-run finished jobs on their inputs with other params or model; compare")
    which = rp.add_mutually_exclusive_group(required=True)
    which.add_argument("--prefix", help="jobs whose outputs (outputs/...) or inputs (inbox/...) lie under this")
    which.add_argument("--jobs", help="comma-separated job ids")
    rp.add_argument("--recipe", help="another recipe (default: each job's own, keeping its resolved params)")
    rp.add_argument("--param", action="append", metavar="NAME=VALUE", help="a param to change (repeatable)")
    rp.add_argument("--model", help="another model id (the param `model`)")
    rp.add_argument("--timeout", type=float, default=600, help="seconds to wait for the new jobs")
    rp.add_argument("--json", action="store_true", help="print the report instead of the table")
    rp.set_defaults(func=cmd_replay)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bucketbrush", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--tenant", help="act as this tenant: its keys under tenants/TENANT/ (BUCKETBRUSH_TENANT)")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the local stack (SeaweedFS, Redis, events, runner)")
    up.add_argument("--runners", type=int, default=1)
    up.add_argument("--new-credentials", action="store_true",
                    help="new S3 keys (by default the last up's keys and ports are kept)")
    up.set_defaults(func=cmd_up)
    sub.add_parser("env", help="export lines for the local stack's S3 endpoint, keys and Redis").set_defaults(
        func=cmd_env)
    sub.add_parser("down", help="stop what `up` started").set_defaults(func=cmd_down)
    sub.add_parser("demo", help="up, run sample jobs end to end, print manifests, down").set_defaults(func=cmd_demo)

    infra = sub.add_parser("infra", help="bucket setup").add_subparsers(dest="infra", required=True)
    infra.add_parser("apply", help="bucket, CORS, lifecycle rules").set_defaults(func=cmd_infra_apply)
    from infra.aws import add_arguments as aws_arguments
    from infra.aws import run as cmd_infra_aws

    aws = infra.add_parser("aws", help="AWS or LocalStack: bucket, S3 -> SQS (or SNS -> SQS) notifications, lifecycle")
    aws_arguments(aws)
    aws.set_defaults(func=cmd_infra_aws)
    from infra.k8s import add_arguments as k8s_arguments
    from infra.k8s import run as cmd_infra_k8s

    k8s = infra.add_parser("k8s", help="Kubernetes manifests from settings: functions, events, runners per "
                                       "capability, KEDA autoscaling on queue length")
    k8s_arguments(k8s)
    k8s.set_defaults(func=cmd_infra_k8s)
    mi = infra.add_parser("minio", help="MinIO: bucket, event routes to the webhook target, ILM rules")
    mi.add_argument("--target-id", default="bucketbrush", help="webhook target id (MINIO_NOTIFY_WEBHOOK_*_<ID>)")
    mi.add_argument("--region", default="", help="the server's MINIO_SITE_REGION, if set")
    mi.add_argument("--print-mc", action="store_true", help="print the equivalent mc commands instead")
    mi.add_argument("--alias", default="minio", help="mc alias (with --print-mc)")
    mi.add_argument("--webhook-endpoint", default="http://functions:8080/events/minio")
    mi.add_argument("--manifests-arn", metavar="ARN",
                    help="also route manifests/*.json to this MinIO target, for event subscribers")
    mi.set_defaults(func=cmd_infra_minio)

    pre = sub.add_parser("presign", help="a presigned POST for one upload into inbox/<recipe>/")
    pre.add_argument("recipe")
    pre.add_argument("--filename", default="upload.png")
    pre.add_argument("--content-type")
    pre.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    pre.add_argument("--expires", type=int, help="seconds")
    pre.add_argument("--webhook", metavar="URL", help="POST this job's events there (signed; see Subscribers)")
    pre.add_argument("--webhook-event", action="append", choices=["started", "progress", "completed"],
                     help="events to send besides completed (repeat)")
    pre.add_argument("--conversation", help="with recipe chat: the conversation the picture is a turn of "
                                            "(--param message=...)")
    pre.set_defaults(func=cmd_presign)
    pg = sub.add_parser("presign-get", help="a fresh presigned GET for a job's manifest (and outputs), or for a key")
    pg.add_argument("target", metavar="JOB_ID|KEY")
    pg.add_argument("--expires", type=int, help="seconds (default BUCKETBRUSH_PRESIGN_EXPIRES_S)")
    pg.set_defaults(func=cmd_presign_get)

    ve = sub.add_parser("verify", help="Content Credentials (C2PA) of a file or bucket key: signer, actions, "
                                       "ingredients, validation")
    ve.add_argument("target", metavar="FILE|KEY")
    ve.add_argument("--json", action="store_true", help="the report as JSON")
    ve.set_defaults(func=cmd_verify)

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
    ls.add_argument("--since", type=float, metavar="MINUTES", help="submitted in the last MINUTES")
    ls.add_argument("--limit", type=int, default=50, help="at most this many matching jobs (newest first)")
    ls.add_argument("--cursor", help="continue a listing")
    ls.set_defaults(func=cmd_jobs_list)
    jobs.add_parser("reindex", help="rebuild the job index from the manifests").set_defaults(func=cmd_jobs_reindex)
    for name, func, text in (
        ("show", cmd_jobs_show, "print a job's manifest"),
        ("delete", cmd_jobs_delete, "delete a finished job with its inputs and outputs"),
        ("retry", cmd_jobs_retry, "run a failed or cancelled job again"),
        ("cancel", cmd_jobs_cancel, "stop a queued or running job"),
    ):
        one = jobs.add_parser(name, help=text)
        one.add_argument("job_id")
        one.set_defaults(func=func)
    dead = jobs.add_parser("dead", help="Dramatiq's dead-letter queue: list, retry or purge its messages")
    dead.add_argument("action", choices=["list", "retry", "purge"])
    dead.add_argument("ids", nargs="*", metavar="ID", help="message or job ids (retry/purge)")
    dead.add_argument("--all", action="store_true", help="retry/purge every dead-lettered message")
    dead.set_defaults(func=cmd_jobs_dead)
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

    sf = sub.add_parser("serve-functions", help="HTTP: MinIO/S3/SNS event targets, presign, health, the studio page")
    sf.add_argument("--host", default="127.0.0.1")
    sf.add_argument("--port", type=int, default=8080)
    sf.set_defaults(func=cmd_serve_functions)

    studio = sub.add_parser("studio", help="the studio page").add_subparsers(dest="studio", required=True)
    pub = studio.add_parser("publish", help="upload the studio page into the bucket as a static site")
    pub.add_argument("--api", required=True, help="the functions host's URL the page calls (/presign, /recipes)")
    pub.add_argument("--prefix", default="studio/")
    pub.add_argument("--public", action="store_true", help="also set a bucket policy: anyone may read the prefix")
    pub.set_defaults(func=cmd_studio_publish)

    swp = sub.add_parser("sweep", help="enqueue inputs no event announced; fail jobs whose runner died")
    swp.add_argument("--grace", type=float, default=60, help="skip objects younger than this many seconds")
    swp.add_argument("--full", action="store_true", help="check every running manifest, not only recent ones")
    swp.add_argument("--under", metavar="PREFIX",
                     help="recover only inputs whose keys start with PREFIX (e.g. inbox/upscale/); "
                          "the dead-runner and lost-message checks still cover every job")
    swp.set_defaults(func=cmd_sweep)

    mo = sub.add_parser("models", help="the diffusion models file: list, doctor, preload")
    mo.add_argument("action", choices=["list", "doctor", "preload"])
    mo.add_argument("ids", nargs="*", help="model ids (preload; default: all)")
    mo.set_defaults(func=cmd_models)

    st = sub.add_parser("status", help="every part: store, broker, queue, event sources, runners, local stack")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    se = sub.add_parser("settings", help="the effective settings by group, secrets masked, and where each came from")
    se.add_argument("--json", action="store_true")
    se.set_defaults(func=cmd_settings)
    rf = sub.add_parser("refine", help="a plain-language request -> intent, recipe, params and prompt")
    rf.add_argument("text")
    rf.add_argument("--has-image", action="store_true", help="the request is about a picture the user has")
    rf.add_argument("--refiner", choices=["rules", "local", "openai"], help="default: BUCKETBRUSH_REFINER (rules)")
    rf.add_argument("--json", action="store_true")
    rf.set_defaults(func=cmd_refine)

    run = sub.add_parser("runner", help="run a runner process (Dramatiq worker)")
    run.add_argument("--ready-file", type=Path)
    run.add_argument("--serve", metavar="CAPS", help="capabilities to consume, comma-separated: cpu,gpu "
                                                      "(`any` always; default: BUCKETBRUSH_RUNNER_SERVE, all)")
    run.add_argument("--devices", metavar="all|0,1", help="one worker process per GPU, pinned with "
                                                          "CUDA_VISIBLE_DEVICES (default: BUCKETBRUSH_RUNNER_DEVICES)")
    run.set_defaults(func=cmd_runner)

    wa = sub.add_parser("watch", help="stream manifest changes as they happen (see Subscribers)")
    wa.add_argument("--job", help="only this job; exit when it ends (0: succeeded, 1: failed or cancelled)")
    wa.add_argument("--recipe", help="only jobs of this recipe")
    wa.add_argument("--final", action="store_true", help="only final manifests (succeeded, failed, cancelled)")
    wa.add_argument("--json", action="store_true", help="one manifest per line, as JSON")
    wa.add_argument("--queue-url", help="AWS: an SQS queue subscribed to the manifests topic "
                                        "(default: BUCKETBRUSH_MANIFESTS_QUEUE_URL); unset: the local stack's filer")
    wa.add_argument("--endpoint-url", help="SQS endpoint (LocalStack); default BUCKETBRUSH_SQS_ENDPOINT_URL")
    wa.add_argument("--filer", help="SeaweedFS filer HOST:PORT (default: the local stack's)")
    wa.set_defaults(func=cmd_watch)

    wh = sub.add_parser("webhooks", help="outbound webhooks: list, show JOB, enable URL, worker")
    wh.add_argument("action", choices=["list", "show", "enable", "worker"])
    wh.add_argument("arg", nargs="?", help="show: a job id; enable: an endpoint URL disabled by a 410")
    wh.add_argument("--threads", type=int, default=4, help="worker: delivery threads")
    wh.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    wh.set_defaults(func=cmd_webhooks)

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
    add_tenant_commands(sub)

    chat = sub.add_parser("chat", help="one chat turn: refine the message, edit the conversation's picture, show it")
    chat.add_argument("message")
    chat.add_argument("--conversation", help="continue this conversation (default: start a new one)")
    chat.add_argument("--image", type=Path, help="a picture for this turn (it becomes the current one)")
    chat.add_argument("--timeout", type=float, default=600)
    chat.add_argument("--json", action="store_true", help="print the turn's job manifest")
    chat.set_defaults(func=cmd_chat)
    conv = sub.add_parser("conversations", help="conversations: list, show, delete, soft delete, restore")
    conv.add_argument("action", choices=["list", "show", "delete", "trash", "deleted", "restore"],
                      help="delete: for good; trash: soft delete (bucket versioning), restore brings it back")
    conv.add_argument("conversation", nargs="?")
    conv.set_defaults(func=cmd_conversations)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("botocore").setLevel(logging.WARNING)
    try:
        code = args.func(Settings(**({"tenant": args.tenant} if args.tenant else {})), args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # `bucketbrush jobs list | head`: the reader has gone, nothing more to say. Point stdout
        # at /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
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

    def first_line(text: object) -> str:
        lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
        return lines[0] if lines else type(exc).__name__

    if isinstance(exc, BucketbrushError):
        return exc.code, first_line(exc)
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
