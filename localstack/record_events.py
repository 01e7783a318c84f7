"""Record real S3 event payloads from LocalStack into tests/events/localstack/.

    python -m localstack.record_events [--endpoint-url URL]   # default: start a private one

Routes a bucket to SQS (and through SNS to a second queue), makes the uploads the parser
tests need (a key with a space, a nested key, a multipart upload), and writes each message
body as the queue delivered it (indented for reading).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bucketbrush.settings import Settings
from bucketbrush.store import s3_client
from functions.sources.sqs import sqs_client
from infra.aws import setup_event_route, sns_client
from localstack.server import LocalStackServer, ensure_venv

OUT = Path(__file__).resolve().parent.parent / "tests" / "events" / "localstack"


def _drain(sqs: Any, queue_url: str, want: int, timeout: float = 20) -> list[str]:
    bodies: list[str] = []
    deadline = time.monotonic() + timeout
    while len(bodies) < want and time.monotonic() < deadline:
        for m in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            bodies.append(m["Body"])
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    return bodies


def record(endpoint: str, out: Path = OUT) -> list[Path]:
    settings = Settings(s3_endpoint_url=endpoint, s3_access_key="test", s3_secret_key="test",
                        bucket="bucketbrush", state_dir=Path(tempfile.mkdtemp()))
    s3, sqs = s3_client(settings), sqs_client(settings, endpoint)
    route = setup_event_route(settings, s3, sqs, queue_name="record-direct", report=lambda _: None)
    # One s3:TestEvent per notification configuration saved.
    test_event = _drain(sqs, route.queue_url, 10, timeout=2)[0]
    uploads = {
        "put_space.json": lambda: s3.put_object(Bucket=settings.bucket, Key="inbox/filter/my photo (1).png",
                                                Body=b"\x89PNG space"),
        "put_nested.json": lambda: s3.put_object(Bucket=settings.bucket, Key="inbox/filter/2026/11/21/a+b.png",
                                                 Body=b"\x89PNG nested"),
        "multipart_complete.json": lambda: _multipart(s3, settings.bucket, "inbox/filter/big upload.png"),
    }
    written = [_write(out / "test_event.json", test_event)]
    for name, upload in uploads.items():
        upload()
        bodies = _drain(sqs, route.queue_url, 1)
        written.append(_write(out / name, bodies[0]))
    # Not in inbox/ or jobs/: must produce no message.
    s3.put_object(Bucket=settings.bucket, Key="manifests/ignored.json", Body=b"{}")
    assert not _drain(sqs, route.queue_url, 1, timeout=2), "a manifest write reached the queue"
    # Through SNS: the queue receives the SNS envelope around the same S3 event.
    via_sns = setup_event_route(settings, s3, sqs, queue_name="record-sns", sns=sns_client(settings, endpoint),
                                report=lambda _: None)
    _drain(sqs, via_sns.queue_url, 10, timeout=2)  # the test events, wrapped
    s3.put_object(Bucket=settings.bucket, Key="jobs/sns-job.json", Body=b'{"recipe": "filter"}')
    written.append(_write(out / "sns_envelope_put.json", _drain(sqs, via_sns.queue_url, 1)[0]))
    return written


def _multipart(s3: Any, bucket: str, key: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for n, body in enumerate([b"a" * (5 * 1024 * 1024), b"b" * 1024], start=1):
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=body)["ETag"]
        parts.append({"PartNumber": n, "ETag": etag})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})


def _write(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json.loads(body), indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m localstack.record_events", description=__doc__.split("\n")[0])
    p.add_argument("--endpoint-url", help="a running LocalStack (default: start a private one)")
    args = p.parse_args(argv)
    server = None
    endpoint = args.endpoint_url
    if not endpoint:
        server = LocalStackServer(ensure_venv(), Path(tempfile.mkdtemp(prefix="localstack-")))
        endpoint = server.start()
    try:
        for path in record(endpoint):
            print(path)
    finally:
        if server:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
