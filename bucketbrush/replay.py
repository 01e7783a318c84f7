"""Replay: run finished jobs again on their original inputs with other params, another model or
another recipe, and compare old and new.

Each new job is an ordinary job spec (``jobs/<replay_id>-<job_id>.json`` with ``replay_of``),
so it takes the same path as any other job (event, handler, quotas, runner) and its manifest
records ``replay_of``. When every new job is final, the report
(``manifests/replays/<replay_id>.json``) compares each pair: the params and model that changed,
processing time, output size, and the similarity of the first image outputs (PSNR from OpenCV,
SSIM from scikit-image when installed).

The use case: before switching a production default (a preset, a model), replay a folder of
real photos with the candidate and read the table.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from bucketbrush.errors import InvalidParams, InvalidState, JobNotFound
from bucketbrush.layout import NotAnInput
from bucketbrush.management import list_jobs
from bucketbrush.manifest import Manifest
from bucketbrush.store import Bucket

# Longest spec job id (bucketbrush.jobs): the replay id, a dash and as much of the old id as fits.
_MAX_JOB_ID = 64


class Change(BaseModel):
    old: Any = None
    new: Any = None


class Pair(BaseModel):
    """One replayed job: the original, the new one, and how they compare."""

    job_id: str
    new_job_id: str | None = None
    status: str = "skipped"  # the new job's final status, or skipped (reason says why)
    reason: str = ""
    recipe: Change = Field(default_factory=Change)
    params: dict[str, Change] = Field(default_factory=dict)  # only the params that changed
    model: Change | None = None  # when the model changed
    processing_s: Change = Field(default_factory=Change)
    output_bytes: Change = Field(default_factory=Change)
    size: Change = Field(default_factory=Change)  # [width, height] of the first image output
    identical: bool | None = None  # the first outputs have the same pixels (signed files differ in bytes)
    psnr_db: float | None = None  # None when identical (infinite) or not comparable
    ssim: float | None = None  # None without scikit-image or when not comparable


class ReplayReport(BaseModel):
    replay_id: str
    created_at: float
    finished_at: float | None = None
    tenant: str | None = None
    selection: dict[str, Any]
    recipe: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    jobs: list[Pair] = Field(default_factory=list)


def select_jobs(bucket: Bucket, *, prefix: str | None = None, job_ids: list[str] | None = None) -> list[Manifest]:
    """The jobs to replay: by id, or every job whose outputs (``outputs/...``) or input lie under
    ``prefix`` (relative to the tenant's space when it does not start with it). Newest first."""
    if job_ids:
        found = []
        for job_id in job_ids:
            if (manifest := bucket.read_manifest(job_id)) is None:
                raise JobNotFound(f"no job {job_id!r} (no {bucket.manifest_key(job_id)})")
            found.append(manifest)
        return found
    if prefix is None:
        raise InvalidParams("replay needs --prefix or --jobs")
    layout = bucket.layout
    if layout.space and not prefix.startswith(layout.space):
        prefix = layout.space + prefix
    if prefix.startswith(layout.outputs):
        ids: list[str] = []
        for page in bucket.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name, Prefix=prefix):
            for obj in page.get("Contents", []):
                job_id = obj["Key"][len(layout.outputs):].split("/", 1)[0]
                if job_id and job_id not in ids:
                    ids.append(job_id)
        return [m for job_id in ids if (m := bucket.read_manifest(job_id)) is not None]
    matches, cursor = [], None
    while True:
        page = list_jobs(bucket, status="succeeded", limit=200, cursor=cursor)
        matches += [m for m in page.jobs if (ref := image_input(bucket, m)) and ref.startswith(prefix)]
        if not (cursor := page.next_cursor):
            return matches


def image_input(bucket: Bucket, manifest: Manifest) -> str | None:
    """The key of the image a job processed: its upload, or its spec's ``input``."""
    if not manifest.inputs:
        return None
    try:
        kind = bucket.layout.root.parse_input(manifest.inputs[0].key).kind
    except NotAnInput:
        kind = "spec"
    if kind == "upload":
        return manifest.inputs[0].key
    return manifest.inputs[1].key if len(manifest.inputs) > 1 else None


def new_replay_id() -> str:
    return "rp" + secrets.token_hex(4)


def start_replay(bucket: Bucket, manifests: list[Manifest], *, recipe: str | None = None,
                 overrides: dict[str, Any] | None = None, model: str | None = None,
                 selection: dict[str, Any] | None = None, replay_id: str | None = None) -> ReplayReport:
    """Write one job spec per finished job; the report lists the pairs (not yet compared)."""
    overrides = dict(overrides or {})
    if model is not None:
        overrides["model"] = model
    report = ReplayReport(replay_id=replay_id or new_replay_id(), created_at=time.time(), tenant=bucket.tenant,
                          selection=selection or {}, recipe=recipe, overrides=overrides)
    for old in manifests:
        pair = Pair(job_id=old.job_id, recipe=Change(old=old.recipe, new=recipe or old.recipe))
        report.jobs.append(pair)
        if old.status != "succeeded":
            pair.reason = f"the job is {old.status}: only succeeded jobs are replayed"
            continue
        new_recipe = recipe or old.recipe
        # The same recipe keeps every resolved param (the seed too), so only the overrides differ.
        params = ({**old.params, **overrides} if new_recipe == old.recipe else dict(overrides))
        # Bulk work: it queues behind interactive jobs on the same runners (bucketbrush/routing.py).
        spec: dict[str, Any] = {"recipe": new_recipe, "params": params, "replay_of": old.job_id,
                                "priority": "bulk"}
        if (key := image_input(bucket, old)) is not None:
            spec["input"] = key
        pair.new_job_id = f"{report.replay_id}-{old.job_id}"[:_MAX_JOB_ID]
        pair.status = "queued"
        bucket.s3.put_object(Bucket=bucket.name, Key=f"{bucket.layout.jobs}{pair.new_job_id}.json",
                             Body=json.dumps(spec).encode(), ContentType="application/json")
    return report


def finish_replay(bucket: Bucket, report: ReplayReport, *, timeout_s: float = 600,
                  on_wait: Callable[[int], None] | None = None) -> ReplayReport:
    """Wait for every new job, compare each pair, write ``manifests/replays/<replay_id>.json``."""
    pending = {p.new_job_id: p for p in report.jobs if p.new_job_id}
    deadline = time.monotonic() + timeout_s
    finals: dict[str, Manifest] = {}
    while pending:
        for job_id in list(pending):
            manifest = bucket.read_manifest(job_id)
            if manifest is not None and manifest.is_final:
                finals[job_id] = manifest
                pending.pop(job_id)
        if not pending:
            break
        if time.monotonic() > deadline:
            for pair in pending.values():
                pair.status, pair.reason = "unfinished", f"not final after {timeout_s:.0f} s"
            break
        if on_wait:
            on_wait(len(pending))
        time.sleep(0.5)
    for pair in report.jobs:
        if pair.new_job_id in finals:
            old = bucket.read_manifest(pair.job_id)
            if old is None:
                raise InvalidState(f"job {pair.job_id} disappeared during the replay")
            compare(bucket, pair, old, finals[pair.new_job_id])
    report.finished_at = time.time()
    bucket.s3.put_object(Bucket=bucket.name, Key=bucket.layout.replay_key(report.replay_id),
                         Body=report.model_dump_json(indent=2).encode(), ContentType="application/json")
    return report


def compare(bucket: Bucket, pair: Pair, old: Manifest, new: Manifest) -> None:
    pair.status = new.status
    if new.error:
        pair.reason = f"{new.error.code}: {new.error.message}"
    pair.params = {k: Change(old=old.params.get(k), new=new.params.get(k))
                   for k in sorted(set(old.params) | set(new.params)) if old.params.get(k) != new.params.get(k)}
    if (old.model or {}) != (new.model or {}):
        pair.model = Change(old=old.model, new=new.model)
    pair.processing_s = Change(old=old.timings.get("processing_s"), new=new.timings.get("processing_s"))
    pair.output_bytes = Change(old=sum(o.bytes for o in old.outputs), new=sum(o.bytes for o in new.outputs))
    old_out = next((o for o in old.outputs if o.content_type.startswith("image/")), None)
    new_out = next((o for o in new.outputs if o.content_type.startswith("image/")), None)
    if old_out is None or new_out is None:
        return
    pair.size = Change(old=[old_out.width, old_out.height], new=[new_out.width, new_out.height])
    read = lambda key: bucket.s3.get_object(Bucket=bucket.name, Key=key)["Body"].read()  # noqa: E731
    pair.psnr_db, pair.ssim, pair.identical = similarity(read(old_out.key), read(new_out.key))


def similarity(old: bytes, new: bytes) -> tuple[float | None, float | None, bool | None]:
    """(PSNR in dB, SSIM, same pixels) of two encoded images, the new one resized to the old
    one's size when they differ; PSNR is None for identical pixels (infinite), SSIM None
    without scikit-image; all None when either does not decode."""
    import cv2
    import numpy as np

    a = cv2.imdecode(np.frombuffer(old, np.uint8), cv2.IMREAD_COLOR)
    b = cv2.imdecode(np.frombuffer(new, np.uint8), cv2.IMREAD_COLOR)
    if a is None or b is None:
        return None, None, None
    if a.shape != b.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    same = bool(np.array_equal(a, b))
    psnr = None if same else float(cv2.PSNR(a, b))
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return psnr, None, same
    ssim = float(structural_similarity(a, b, channel_axis=2, data_range=255))
    return psnr, (ssim if math.isfinite(ssim) else None), same


def table(report: ReplayReport, key: str) -> list[str]:
    """The report (stored at ``key``) as terminal lines: one row per job."""
    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    rows = [f"replay {report.replay_id}: {len(report.jobs)} job(s); report at {key}",
            f"{'job':<26} {'new job':<36} {'status':<9} {'time s old>new':>15} {'bytes old>new':>19} "
            f"{'PSNR dB':>8} {'SSIM':>6}  changed"]
    for p in report.jobs:
        changed = [f"{k}: {c.old!r}>{c.new!r}" for k, c in p.params.items()]
        if p.recipe.old != p.recipe.new:
            changed.insert(0, f"recipe: {p.recipe.old}>{p.recipe.new}")
        if p.model is not None:
            changed.append(f"model: {(p.model.old or {}).get('id')}>{(p.model.new or {}).get('id')}")
        psnr = "same" if p.identical else num(p.psnr_db, ".1f")
        rows.append(
            f"{p.job_id[:26]:<26} {(p.new_job_id or '-')[:36]:<36} {p.status:<9} "
            f"{num(p.processing_s.old, '.3f'):>7}>{num(p.processing_s.new, '.3f'):<7} "
            f"{num(p.output_bytes.old, ','):>9}>{num(p.output_bytes.new, ','):<9} {psnr:>8} {num(p.ssim, '.3f'):>6}  "
            + ("; ".join(changed) or "-") + (f"  ({p.reason})" if p.reason else ""))
    return rows
