"""S3 -> SQS (directly, or through SNS) -> the handler.

A message is deleted only after the handler returned for all of its records, so a message
that could not be enqueued (broker down, store down) comes back after its visibility timeout.
A message that is not an S3 event at all is deleted and logged: redelivering it would never
help. Put a redrive policy (dead-letter queue) on the queue for anything that keeps failing.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from bucketbrush.settings import Settings
from functions.events import InvalidEvent, S3Record, parse_records

log = logging.getLogger(__name__)

MAX_MESSAGES = 10  # SQS's limit for one receive and one batch delete


def records_from_body(body: str | bytes) -> list[S3Record]:
    """S3 records in one queue message body: a raw S3 event notification (S3 -> SQS, or
    SNS with raw message delivery) or an SNS envelope around one (S3 -> SNS -> SQS).

    Returns [] for ``s3:TestEvent``; raises InvalidEvent for anything else.
    """
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidEvent(f"message body is not JSON: {exc}") from exc
    if isinstance(doc, dict) and "Type" in doc and "Records" not in doc:
        if doc.get("Type") != "Notification" or not isinstance(doc.get("Message"), str):
            raise InvalidEvent(f"SNS message of type {doc.get('Type')!r} carries no S3 event")
        return parse_records(doc["Message"])
    return parse_records(doc)


def sqs_client(settings: Settings, endpoint_url: str | None = None) -> Any:
    """A boto3 SQS client with the settings' region and credentials.

    ``endpoint_url`` defaults to AWS; LocalStack serves SQS on the same endpoint as S3.
    """
    kwargs = settings.s3_client_kwargs()
    kwargs.pop("endpoint_url", None)
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    # The read timeout must outlast a long poll (at most 20 s).
    config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=40)
    return boto3.client("sqs", config=config, **kwargs)


@dataclass
class PollResult:
    """What one receive did, by message."""

    received: int = 0
    handled: int = 0  # handler returned (enqueued, duplicate, ignored, rejected): deleted
    dropped: int = 0  # not an S3 event, or s3:TestEvent: deleted unhandled
    failed: int = 0  # handler raised: left for redelivery
    outcomes: list[Any] = field(default_factory=list)


class SqsPoller:
    """Long-poll one queue and feed its S3 events to ``handle`` until stopped."""

    def __init__(self, sqs: Any, queue_url: str, handle: Callable[[list[S3Record]], Sequence[Any]], *,
                 wait_time_s: int = 20, visibility_timeout_s: int | None = 60,
                 max_messages: int = MAX_MESSAGES, submit: Callable[[S3Record], Future[Any]] | None = None) -> None:
        if not 0 <= wait_time_s <= 20:
            raise ValueError("wait_time_s must be 0-20 (SQS's long-poll limit)")
        if not 1 <= max_messages <= MAX_MESSAGES:
            raise ValueError(f"max_messages must be 1-{MAX_MESSAGES}")
        self.sqs = sqs
        self.queue_url = queue_url
        self.handle = handle
        # Handing records over without waiting (Handler.submit): every message of a batch is
        # handled at once, in order per key; each is deleted once all its records are done.
        self.submit = submit
        self.wait_time_s = wait_time_s
        self.visibility_timeout_s = visibility_timeout_s
        self.max_messages = max_messages

    def poll_once(self) -> PollResult:
        """Receive one batch, hand each message's records to the handler, delete what is done.

        Raises only when SQS itself fails (receive or delete).
        """
        kwargs: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": self.max_messages,
            "WaitTimeSeconds": self.wait_time_s,
            "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
        }
        if self.visibility_timeout_s is not None:
            kwargs["VisibilityTimeout"] = self.visibility_timeout_s
        messages = self.sqs.receive_message(**kwargs).get("Messages", [])
        result = PollResult(received=len(messages))
        done: list[dict[str, Any]] = []
        if self.submit is not None:
            messages = [self._submitted(m) for m in messages]
        for message in messages:
            try:
                records = records_from_body(message.get("Body", ""))
            except InvalidEvent as exc:
                log.warning("deleting malformed SQS message %s: %s", message.get("MessageId"), exc)
                result.dropped += 1
                done.append(message)
                continue
            if not records:  # s3:TestEvent, sent when a notification configuration is saved
                result.dropped += 1
                done.append(message)
                continue
            try:
                if "futures" in message:
                    wait(message["futures"])
                    result.outcomes.extend(f.result() for f in message["futures"])
                else:
                    result.outcomes.extend(self.handle(records))
            except Exception:
                count = message.get("Attributes", {}).get("ApproximateReceiveCount", "?")
                log.exception("could not handle SQS message %s (receive %s); leaving it for redelivery",
                              message.get("MessageId"), count)
                result.failed += 1
                continue
            result.handled += 1
            done.append(message)
        self._delete(done)
        return result

    def _submitted(self, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` with its records handed to ``submit`` (``futures``), when it has any."""
        assert self.submit is not None
        try:
            records = records_from_body(message.get("Body", ""))
        except InvalidEvent:
            return message  # the loop below drops it
        return {**message, "futures": [self.submit(r) for r in records]} if records else message

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        if not messages:
            return
        response = self.sqs.delete_message_batch(
            QueueUrl=self.queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
        for failure in response.get("Failed", []):
            # Harmless: the message comes back and the handler de-duplicates it.
            log.warning("could not delete SQS message %s: %s", messages[int(failure["Id"])].get("MessageId"),
                        failure.get("Message") or failure.get("Code"))

    def run(self, stop: threading.Event, *, on_ready: Callable[[], None] | None = None,
            max_backoff_s: float = 30) -> None:
        """Poll until ``stop`` is set; back off while SQS or the handler keeps failing.

        Stopping takes up to one long poll (``wait_time_s``).
        """
        backoff = 0.0
        if on_ready:
            on_ready()
        while not stop.is_set():
            try:
                result = self.poll_once()
            except Exception:
                backoff = min(max(backoff * 2, 0.5), max_backoff_s)
                log.exception("SQS receive/delete failed; retrying in %.1fs", backoff)
            else:
                if result.failed:
                    backoff = min(max(backoff * 2, 0.5), max_backoff_s)
                    log.warning("%d message(s) left for redelivery; next poll in %.1fs", result.failed, backoff)
                else:
                    backoff = 0.0
            if backoff:
                stop.wait(backoff)
