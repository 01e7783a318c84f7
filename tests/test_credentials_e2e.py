"""Content Credentials through the whole stack: the runner signs with the development signer
`up` made, `bucketbrush verify` reads a key, a chain of two jobs, the video recipe's MP4, and
the plain XMP of an AI-made image. (Every e2e test that calls check_outputs also checks each
output's credentials against the recipe's row of the table.)"""

from __future__ import annotations

import hashlib
import io
import json
import stat
import sys
from pathlib import Path

import pytest
from PIL import Image

from bucketbrush.cli import main
from bucketbrush.credentials import DEV_KEY, TRAINED, dev_dir, read_credentials, trust_anchors
from bucketbrush.samples import portrait
from gpu_runner.video_samples import sample_clip
from tests.helpers import check_credentials, check_outputs, drop, png_bytes, wait_final

pytestmark = pytest.mark.e2e


def get(bucket, key: str) -> bytes:
    return bucket.s3.get_object(Bucket=bucket.name, Key=key)["Body"].read()


def test_up_made_an_owner_only_development_signer(stack):
    folder = dev_dir(stack.settings.state_dir)
    assert stat.S_IMODE((folder / DEV_KEY).stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_two_jobs_in_a_chain_and_verify_by_key(settings, bucket, capsys, monkeypatch):
    first = drop(bucket, "inbox/filter/chain.png", png_bytes(portrait(64, 80)), Metadata={"style": "sepia"})
    m1 = wait_final(bucket, first)
    assert m1.status == "succeeded", m1.error
    check_outputs(bucket, m1)
    # The first job's output is the second job's input, as a person would re-upload it.
    second = drop(bucket, "inbox/upscale/chain.png", get(bucket, m1.outputs[0].key),
                  Metadata={"params": json.dumps({"scale": 2, "model": "anime"})})
    m2 = wait_final(bucket, second, timeout=120)
    assert m2.status == "succeeded", m2.error
    [out] = m2.outputs
    report = check_credentials(bucket, m2, out, get(bucket, out.key))
    [ingredient] = report.ingredients
    assert ingredient["content_credentials"] and ingredient["job_id"] == first
    assert report.manifests == 2  # the first job's manifest travels inside the second's output
    assert report.job["model"]["license"] == "BSD-3-Clause"

    monkeypatch.setenv("BUCKETBRUSH_BUCKET", settings.bucket)  # the rest comes from the stack's state dir
    capsys.readouterr()
    assert main(["verify", out.key]) == 0
    text = capsys.readouterr().out
    assert "content credentials: Trusted" in text and "bucketbrush development signer" in text
    assert "c2pa.resized" in text and "compositeWithTrainedAlgorithmicMedia" in text
    assert f"(job {first})" in text
    assert main(["verify", out.key, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ingredients"][0]["job_id"] == first


def test_a_tampered_output_fails_verify(bucket, tmp_path, capsys):
    job = drop(bucket, "inbox/filter/tamper.jpg", png_bytes(portrait(64, 80)),
               Metadata={"params": json.dumps({"style": "noir", "format": "jpeg"})})
    manifest = wait_final(bucket, job)
    assert manifest.status == "succeeded", manifest.error
    data = bytearray(get(bucket, manifest.outputs[0].key))
    data[-100] ^= 0xFF  # one byte of the JPEG's entropy-coded pixels
    path = tmp_path / "noir.jpg"
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(path)]) == 1
    assert "content credentials: Invalid" in capsys.readouterr().out


def test_video_mp4_and_its_poster_are_signed(bucket):
    clip = sample_clip(1.0, fps=8, size=(96, 64), noise=2)
    job = drop(bucket, "inbox/video/c2pa.mp4", clip, ContentType="video/mp4",
               Metadata={"params": json.dumps({"style": "noir"})})
    manifest = wait_final(bucket, job, timeout=120)
    assert manifest.status == "succeeded", manifest.error
    for out in manifest.outputs:
        report = check_credentials(bucket, manifest, out, get(bucket, out.key))
        assert report.ingredients[0]["format"] == "video/mp4"
    assert [a["action"] for a in report.actions][-1] == "c2pa.transcoded"


def test_ai_output_has_the_xmp_source_type(bucket):
    job = drop(bucket, "inbox/img2img/xmp.png", png_bytes(portrait(64, 80)),
               Metadata={"params": json.dumps({"prompt": "oil", "steps": 2, "seed": 1, "format": "webp"})})
    manifest = wait_final(bucket, job, timeout=120)
    assert manifest.status == "succeeded", manifest.error
    [image] = check_outputs(bucket, manifest)
    data = get(bucket, manifest.outputs[0].key)
    xmp = Image.open(io.BytesIO(data)).getxmp()
    assert xmp["xmpmeta"]["RDF"]["Description"]["DigitalSourceType"] == TRAINED
    assert read_credentials(data, "image/webp", anchors=trust_anchors(bucket.settings)).digital_source_types == [
        TRAINED]


def test_a_runner_whose_certificate_cannot_sign_refuses_to_start(settings, tmp_path):
    """A real runner process with a key that is not its certificate's: it signs a test PNG at
    start, fails, says which settings and why, and exits 2 without taking the queued job."""
    import redis

    from bucketbrush.routing import all_queues, redis_key
    from infra import procs
    from tests.helpers import signing_chain
    from tests.test_runner_processes import new_corner

    corner = new_corner(settings, tmp_path)  # its own bucket and queue namespace
    _, chain, _ = signing_chain()
    _, _, other_key = signing_chain()
    spec = corner.enqueue("test-slow", "waits", seconds=0, steps=1)
    env = corner.runner_env(c2pa_signing_key=other_key.decode(), c2pa_signing_certs=chain.decode())
    popen, proc = procs.spawn("bad-key-runner", [sys.executable, "-m", "bucketbrush.cli", "runner"], corner.logs, env)
    try:
        assert popen.wait(timeout=120) == 2
    finally:
        procs.terminate(proc, 10)
    log = Path(proc.log).read_text(errors="replace")
    assert ("error [config_error]: content credentials cannot be signed with BUCKETBRUSH_C2PA_SIGNING_KEY and "
            "BUCKETBRUSH_C2PA_SIGNING_CERTS (certificate CN=test signer): the private key is not the signing "
            "certificate's") in log, log[-2000:]
    assert "PRIVATE KEY" not in log  # the key never reaches the log
    # The job was not taken: its message is still queued, no manifest, no outputs.
    client = redis.Redis.from_url(corner.settings.redis_url)
    assert sum(client.llen(redis_key(corner.settings, q)) for q in all_queues(corner.settings)) == 1
    assert corner.bucket.read_manifest(spec.job_id) is None and corner.outputs(spec.job_id) == []


def test_a_timestamp_authority_that_does_not_answer_fails_jobs_with_signing_failed(settings, tmp_path):
    """The start-up self-test does not ask the timestamp authority; when it does not answer at a
    job's signing, the job fails with signing_failed and writes nothing."""
    from tests.test_runner_processes import new_corner, runner

    corner = new_corner(settings, tmp_path)
    env = corner.runner_env(c2pa_tsa_url="http://127.0.0.1:9/")  # discard port: refused at once
    with runner(corner, "no-tsa-runner", env) as r:
        spec = corner.enqueue("test-slow", "unsigned", seconds=0, steps=1, outputs=2)
        manifest = wait_final(corner.bucket, spec.job_id, timeout=60)
        assert manifest.status == "failed" and manifest.error.code == "signing_failed", manifest.error
        assert "127.0.0.1:9" in manifest.error.message
        assert manifest.error.retryable is False and manifest.attempts == 1
        assert manifest.outputs == [] and corner.outputs(spec.job_id) == []
        assert "PRIVATE KEY" not in r.log


def test_with_content_credentials_off_a_runner_writes_plain_outputs(settings, tmp_path):
    from tests.test_runner_processes import new_corner, runner

    corner = new_corner(settings, tmp_path)
    env = corner.runner_env(content_credentials="off")
    with runner(corner, "unsigned-runner", env):
        spec = corner.enqueue("test-slow", "plain", seconds=0, steps=1, outputs=2)
        manifest = wait_final(corner.bucket, spec.job_id, timeout=60)
    assert manifest.status == "succeeded", manifest.error
    assert len(manifest.outputs) == 2
    for out in manifest.outputs:
        assert out.content_credentials is None
        assert read_credentials(get(corner.bucket, out.key), out.content_type) is None


def test_a_mask_the_recipe_read_is_an_input_to_ingredient(bucket):
    from PIL import ImageDraw

    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).ellipse((16, 16, 48, 48), fill=255)
    mask_bytes = png_bytes(mask)
    bucket.s3.put_object(Bucket=bucket.name, Key="masks/c2pa-round.png", Body=mask_bytes)
    job = drop(bucket, "inbox/inpaint/c2pa.png", png_bytes(portrait(64, 64)),
               Metadata={"params": json.dumps({"prompt": "a tree", "mask_key": "masks/c2pa-round.png",
                                               "steps": 2, "seed": 7})})
    manifest = wait_final(bucket, job, timeout=120)
    assert manifest.status == "succeeded", manifest.error
    out = manifest.outputs[0]
    report = check_credentials(bucket, manifest, out, get(bucket, out.key))
    assert report.digital_source_types == ["http://cv.iptc.org/newscodes/digitalsourcetype/"
                                           "compositeWithTrainedAlgorithmicMedia"]
    [mask_ingredient] = [i for i in report.ingredients if i["relationship"] == "inputTo"]
    assert mask_ingredient["title"] == "c2pa-round.png"
    assert mask_ingredient["sha256"] == hashlib.sha256(mask_bytes).hexdigest()
