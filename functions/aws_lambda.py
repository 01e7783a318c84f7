"""AWS Lambda entry points: the same Handler behind S3 -> Lambda and SQS -> Lambda.

Configure the function with ``BUCKETBRUSH_*`` environment variables (bucket, Redis URL); S3
credentials come from the execution role. The Handler (S3 client, Redis pool) is built once
per container, on the first invocation, and reused while the container stays warm.

- ``functions.aws_lambda.s3_handler``: an S3 event notification invokes the function
  directly (asynchronously; also accepts SNS-wrapped S3 events). Raising makes Lambda retry
  the invocation, so a broker outage raises; a malformed event is logged and dropped.
- ``functions.aws_lambda.sqs_handler``: an SQS event source mapping with
  ``FunctionResponseTypes: ["ReportBatchItemFailures"]``. Only the messages that could not be
  enqueued are reported back (and redelivered); malformed ones are dropped.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from bucketbrush.settings import Settings
from functions.events import InvalidEvent, S3Record, parse_records
from functions.handler import Handler, Outcome
from functions.sources.sqs import records_from_body

log = logging.getLogger(__name__)
log.setLevel(logging.INFO)  # Lambda's root logger defaults to WARNING


@cache
def get_handler() -> Handler:
    """The container's Handler, built from the environment on first use (not at import)."""
    settings = Settings()
    return Handler.from_settings(settings)


def _summary(outcomes: list[Outcome]) -> dict[str, Any]:
    return {"outcomes": [{"key": o.key, "action": o.action, "job_id": o.job_id, "reason": o.reason}
                         for o in outcomes]}


def _records_from_s3_event(event: Any) -> list[S3Record]:
    records = event.get("Records") if isinstance(event, dict) else None
    if isinstance(records, list) and records and isinstance(records[0], dict) and "Sns" in records[0]:
        # S3 -> SNS -> Lambda: each SNS record carries one S3 notification as text.
        out: list[S3Record] = []
        for record in records:
            message = (record.get("Sns") or {}).get("Message")
            if not isinstance(message, str):
                raise InvalidEvent("SNS record without a Message")
            out.extend(parse_records(message))
        return out
    return parse_records(event)


def s3_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Entry point for S3 (or SNS) -> Lambda. Raises when the jobs could not be enqueued."""
    try:
        records = _records_from_s3_event(event)
    except InvalidEvent as exc:
        log.warning("dropping an event that is not an S3 notification: %s", exc)
        return {"outcomes": [], "error": str(exc)}
    return _summary(get_handler().handle(records))


def sqs_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Entry point for SQS -> Lambda, with a partial batch response."""
    failures = []
    outcomes: list[Outcome] = []
    for message in event.get("Records", []):
        message_id = message.get("messageId")
        try:
            records = records_from_body(message.get("body", ""))
        except InvalidEvent as exc:
            log.warning("dropping malformed SQS message %s: %s", message_id, exc)
            continue
        if not records:
            continue  # s3:TestEvent
        try:
            outcomes.extend(get_handler().handle(records))
        except Exception:
            log.exception("could not handle SQS message %s; reporting it for redelivery", message_id)
            failures.append({"itemIdentifier": message_id})
    log.info("handled %d records, %d message(s) failed", len(outcomes), len(failures))
    return {"batchItemFailures": failures}
