"""`bucketbrush replay` on the real stack: finished jobs re-run on their inputs with other params,
lineage recorded, and a report that compares old and new."""

from __future__ import annotations

import json
import uuid
from typing import Any

from bucketbrush.replay import ReplayReport, similarity
from bucketbrush.samples import landscape
from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from tests.helpers import drop, png_bytes, wait_final
from tests.test_tenants import cli


def test_replay_a_folder_with_another_preset(stack: Any, settings: Settings, bucket: Bucket) -> None:
    folder = f"inbox/filter/replay-{uuid.uuid4().hex[:8]}/"
    originals = []
    for n, (w, h) in enumerate([(96, 64), (80, 80), (64, 96)]):
        job_id = drop(bucket, f"{folder}photo{n}.png", png_bytes(landscape(w, h)), Metadata={"style": "noir"})
        originals.append(wait_final(bucket, job_id))
    assert all(m.status == "succeeded" for m in originals)
    other = drop(bucket, f"inbox/filter/elsewhere-{uuid.uuid4().hex[:8]}.png", png_bytes(), Metadata={"style": "noir"})
    wait_final(bucket, other)

    report = ReplayReport.model_validate_json(
        cli(settings, "replay", "--prefix", folder, "--param", "style=sepia", "--json"))
    assert sorted(p.job_id for p in report.jobs) == sorted(m.job_id for m in originals)  # the folder only
    stored = bucket.s3.get_object(Bucket=bucket.name, Key=f"manifests/replays/{report.replay_id}.json")
    assert ReplayReport.model_validate_json(stored["Body"].read()) == report
    for pair in report.jobs:
        assert pair.status == "succeeded", pair.reason
        assert {k: (c.old, c.new) for k, c in pair.params.items()} == {"style": ("noir", "sepia")}
        new = bucket.read_manifest(pair.new_job_id)
        assert new.replay_of == pair.job_id
        spec = json.loads(bucket.s3.get_object(Bucket=bucket.name, Key=f"jobs/{pair.new_job_id}.json")["Body"].read())
        assert spec["priority"] == "bulk" and spec["replay_of"] == pair.job_id
        assert new.inputs[-1].key.startswith(folder)  # the original input, not a copy
        assert pair.identical is False and pair.psnr_db is not None and 0 < pair.psnr_db < 60
        assert pair.ssim is not None and pair.ssim < 0.99
        assert pair.processing_s.old is not None and pair.processing_s.new is not None
        assert pair.output_bytes.new == sum(o.bytes for o in new.outputs)
        assert pair.size.old == pair.size.new

    # The same preset again: the comparison says "the same" (the filter is deterministic; the
    # files' bytes differ when Content Credentials sign them, the pixels do not).
    table = cli(settings, "replay", "--jobs", originals[0].job_id, "--param", "style=noir")
    row = next(line for line in table.splitlines() if line.startswith(originals[0].job_id))
    assert " same " in row and "1.000" in row
    # A prefix under outputs/ picks the jobs whose outputs are there.
    again = ReplayReport.model_validate_json(cli(
        settings, "replay", "--prefix", f"outputs/{originals[1].job_id}/", "--param", "style=watercolor", "--json"))
    assert [p.job_id for p in again.jobs] == [originals[1].job_id]
    # A param the recipe does not take: the new job fails with the runner's own code.
    bad = ReplayReport.model_validate_json(cli(
        settings, "replay", "--jobs", originals[2].job_id, "--model", "no-such-model", "--json", code=1))
    assert bad.jobs[0].status == "failed" and bad.jobs[0].reason.startswith("invalid_params")


def test_similarity_of_encoded_images() -> None:
    a, b = png_bytes(landscape(64, 48)), png_bytes(landscape(64, 48).rotate(180))
    assert similarity(a, a) == (None, 1.0, True)
    psnr, ssim, same = similarity(a, b)
    assert psnr is not None and psnr < 30 and ssim is not None and ssim < 0.9 and same is False
    # Another size is compared at the original's size.
    psnr, ssim, same = similarity(a, png_bytes(landscape(128, 96)))
    assert psnr is not None and psnr > 20 and ssim is not None and ssim > 0.5 and same is False
    assert json.loads(json.dumps(similarity(a, b)))  # plain floats, fit for the JSON report
