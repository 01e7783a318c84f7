"""The AWS event route: bucket -> S3 event notifications -> SQS (directly or through SNS).

    bucketbrush infra aws [--queue bucketbrush-events] [--via sqs|sns]

Works on LocalStack and on AWS alike: the bucket (CORS, lifecycle rules via
``infra.bucket.apply_bucket``), a queue with a dead-letter queue and a policy that lets this
bucket (or topic) send to it, and one notification per prefix the handler reacts to
(``inbox/`` and ``jobs/``: never the outputs and manifests the runner writes). Manifests go
to a topic of their own (``<queue>-manifests``) that event subscribers attach queues to
(``--manifests-queue NAME`` makes one, for ``bucketbrush watch``). Idempotent.
Prints the queue URL for ``SqsPoller``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

import boto3

from bucketbrush.settings import Settings
from bucketbrush.store import s3_client
from functions.sources.sqs import sqs_client
from infra.bucket import apply_bucket, layouts, rule_id

EVENTS = ["s3:ObjectCreated:*"]
# After this many failed receives a message goes to the dead-letter queue.
MAX_RECEIVES = 10


@dataclass(frozen=True)
class EventRoute:
    queue_url: str
    queue_arn: str
    dlq_url: str
    topic_arn: str | None = None
    # Manifest events for subscribers: the topic, and the queue subscribed to it if one was asked for.
    manifests_topic_arn: str | None = None
    manifests_queue_url: str | None = None


def notification_prefixes(settings: Settings) -> dict[str, str]:
    """Notification id -> key prefix: the only folders whose uploads become jobs (each
    tenant's too: S3 filters by prefix, and tenants/ alone would announce every output)."""
    return {rule_id(name, layout): prefix
            for layout in layouts(settings) for name, prefix in layout.input_folders.items()}


def _queue(sqs: Any, name: str, attributes: dict[str, str] | None = None) -> tuple[str, str]:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]  # returns the existing queue when present
    if attributes:
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def _allow(queue_arn: str, service: str, source_arn: str) -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "bucketbrush-events",
            "Effect": "Allow",
            "Principal": {"Service": service},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnLike": {"aws:SourceArn": source_arn}},
        }],
    })


def _topic(sns: Any, name: str, bucket_arn: str) -> str:
    """A topic this bucket may publish to (idempotent); its ARN."""
    topic_arn = sns.create_topic(Name=name)["TopicArn"]
    sns.set_topic_attributes(TopicArn=topic_arn, AttributeName="Policy", AttributeValue=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Sid": "bucketbrush-s3", "Effect": "Allow",
                       "Principal": {"Service": "s3.amazonaws.com"}, "Action": "sns:Publish",
                       "Resource": topic_arn, "Condition": {"ArnLike": {"aws:SourceArn": bucket_arn}}}],
    }))
    return topic_arn


def subscribe_queue(sqs: Any, sns: Any, topic_arn: str, queue_name: str) -> tuple[str, str]:
    """A queue subscribed to ``topic_arn`` (SNS envelopes kept), with a policy that lets the
    topic send to it; its URL and ARN. Idempotent."""
    queue_url, queue_arn = _queue(sqs, queue_name)
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={
        "Policy": _allow(queue_arn, "sns.amazonaws.com", topic_arn)})
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    return queue_url, queue_arn


def setup_event_route(settings: Settings, s3: Any, sqs: Any, *, queue_name: str = "bucketbrush-events",
                      sns: Any = None, via_sns: bool | None = None, manifests_topic: str | None = None,
                      manifests_queue: str | None = None, report=print) -> EventRoute:
    """Converge the bucket and its notifications; ``via_sns`` (default: ``sns`` given) routes
    the job events through a topic. ``manifests_topic`` (needs ``sns``): also route
    ``manifests/*.json`` to that topic for event subscribers, and subscribe ``manifests_queue``
    to it when given."""
    via_sns = sns is not None if via_sns is None else via_sns
    for line in apply_bucket(s3, settings):
        report(line)
    dlq_url, dlq_arn = _queue(sqs, f"{queue_name}-dlq", {"MessageRetentionPeriod": str(14 * 24 * 3600)})
    queue_url, queue_arn = _queue(sqs, queue_name, {
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVES)}),
        # Longer than the handler ever takes; a failed message comes back after this.
        "VisibilityTimeout": "60",
    })
    bucket_arn = f"arn:aws:s3:::{settings.bucket}"
    filters = notification_prefixes(settings)
    topic_arn = None
    if not via_sns:
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={
            "Policy": _allow(queue_arn, "s3.amazonaws.com", bucket_arn)})
        config: dict[str, Any] = {"QueueConfigurations": [
            {"Id": cid, "QueueArn": queue_arn, "Events": EVENTS,
             "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}}
            for cid, prefix in filters.items()
        ]}
        report(f"notifications: {', '.join(filters.values())} -> {queue_arn}")
    else:
        topic_arn = _topic(sns, f"{queue_name}-topic", bucket_arn)
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={
            "Policy": json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Sid": "bucketbrush-sns", "Effect": "Allow",
                               "Principal": {"Service": "sns.amazonaws.com"}, "Action": "sqs:SendMessage",
                               "Resource": queue_arn, "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}}}],
            })})
        # The envelope is kept (no raw delivery): the poller unwraps both forms.
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
        config = {"TopicConfigurations": [
            {"Id": cid, "TopicArn": topic_arn, "Events": EVENTS,
             "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}}
            for cid, prefix in filters.items()
        ]}
        report(f"notifications: {', '.join(filters.values())} -> {topic_arn} -> {queue_arn}")
    manifests_arn = manifests_url = None
    if manifests_topic:
        # Every manifest write (queued, running, progress, final) is one message; subscribers
        # read the manifest (or the eTag) to see which state it is.
        manifests_arn = _topic(sns, manifests_topic, bucket_arn)
        config.setdefault("TopicConfigurations", []).append(
            {"Id": "bucketbrush-manifests", "TopicArn": manifests_arn, "Events": EVENTS,
             "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": settings.manifests_prefix},
                                                {"Name": "suffix", "Value": ".json"}]}}})
        report(f"notifications: {settings.manifests_prefix}*.json -> {manifests_arn} (for subscribers)")
        if manifests_queue:
            manifests_url, subscriber_arn = subscribe_queue(sqs, sns, manifests_arn, manifests_queue)
            report(f"subscribed {subscriber_arn} to {manifests_arn}")
    s3.put_bucket_notification_configuration(Bucket=settings.bucket, NotificationConfiguration=config)
    return EventRoute(queue_url=queue_url, queue_arn=queue_arn, dlq_url=dlq_url, topic_arn=topic_arn,
                      manifests_topic_arn=manifests_arn, manifests_queue_url=manifests_url)


def sns_client(settings: Settings, endpoint_url: str | None = None) -> Any:
    kwargs = settings.s3_client_kwargs()
    kwargs.pop("endpoint_url", None)
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    return boto3.client("sns", **kwargs)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", default="bucketbrush-events", help="queue name")
    p.add_argument("--via", choices=["sqs", "sns"], default="sqs", help="S3 -> SQS, or S3 -> SNS -> SQS")
    p.add_argument("--endpoint-url", help="SQS/SNS endpoint (default: the S3 endpoint; unset on AWS)")
    p.add_argument("--manifests-topic", help="SNS topic for manifests/ events (default: QUEUE-manifests)")
    p.add_argument("--no-manifests", action="store_true", help="no manifests topic")
    p.add_argument("--manifests-queue", metavar="NAME",
                   help="also create this queue, subscribed to the manifests topic (for `bucketbrush watch`)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """``bucketbrush infra aws``: prints the queue URL as an export line."""
    endpoint = args.endpoint_url or settings.s3_endpoint_url
    manifests_topic = None if args.no_manifests else (args.manifests_topic or f"{args.queue}-manifests")
    route = setup_event_route(
        settings, s3_client(settings), sqs_client(settings, endpoint), queue_name=args.queue,
        sns=sns_client(settings, endpoint), via_sns=args.via == "sns", manifests_topic=manifests_topic,
        manifests_queue=None if args.no_manifests else args.manifests_queue,
        report=lambda line: print(line, file=sys.stderr),
    )
    print(f"export BUCKETBRUSH_SQS_QUEUE_URL={route.queue_url}")
    if route.manifests_topic_arn:
        print(f"export BUCKETBRUSH_MANIFESTS_TOPIC_ARN={route.manifests_topic_arn}")
    if route.manifests_queue_url:
        print(f"export BUCKETBRUSH_MANIFESTS_QUEUE_URL={route.manifests_queue_url}")
    return 0
