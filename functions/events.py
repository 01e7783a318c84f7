"""The S3 event record, typed at the edge.

Tolerant of every emitter seen: AWS (``aws:s3``, keys form-encoded with ``+`` for space),
MinIO/RustFS (``minio:s3``, ``s3:``-prefixed event names, empty region), LocalStack (``%20``)
and moto (``%2F``). Keys are URL-decoded exactly once, here.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bucketbrush.jobs import ObjectRef


class InvalidEvent(ValueError):
    """The payload is not an S3 event notification."""


class _Bucket(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    name: str


class _Object(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)
    key: str
    size: int | None = None
    etag: str | None = Field(default=None, alias="eTag")
    version_id: str | None = Field(default=None, alias="versionId")
    sequencer: str | None = None

    @field_validator("etag", "version_id", mode="before")
    @classmethod
    def _blank_is_none(cls, v: Any) -> Any:
        if v in ("", "null"):
            return None
        return v.strip('"') if isinstance(v, str) else v


class _S3(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    bucket: _Bucket
    object: _Object


class S3Record(BaseModel):
    """One ``Records[]`` entry, with only the fields bucketbrush uses."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    event_source: str = Field(default="", alias="eventSource")
    event_name: str = Field(alias="eventName")
    event_time: str | None = Field(default=None, alias="eventTime")
    s3: _S3

    @property
    def bucket(self) -> str:
        return self.s3.bucket.name

    @property
    def key(self) -> str:
        return self.s3.object.key

    @property
    def is_created(self) -> bool:
        # AWS: "ObjectCreated:Put"; MinIO: "s3:ObjectCreated:Put".
        return self.event_name.removeprefix("s3:").startswith("ObjectCreated:")

    @property
    def ref(self) -> ObjectRef:
        o = self.s3.object
        return ObjectRef(bucket=self.bucket, key=o.key, etag=o.etag, version_id=o.version_id, size=o.size)

    @classmethod
    def created(cls, source: str, ref: ObjectRef, *, sequencer: str | None = None,
                event_time: str | None = None) -> S3Record:
        """Build a record for an object that a non-S3 source (subscription, sweep) saw."""
        return cls(
            event_source=source,
            event_name="ObjectCreated:Put",
            event_time=event_time,
            s3=_S3(
                bucket=_Bucket(name=ref.bucket),
                object=_Object(key=ref.key, size=ref.size, etag=ref.etag,
                               version_id=ref.version_id, sequencer=sequencer),
            ),
        )


def parse_records(payload: Any) -> list[S3Record]:
    """Records in an S3 event notification (dict, JSON text or bytes).

    Returns [] for S3's ``s3:TestEvent``; raises InvalidEvent for anything that is not an
    event notification, never another exception.
    """
    if isinstance(payload, (bytes, bytearray)):
        try:
            payload = payload.decode()
        except UnicodeDecodeError as exc:
            raise InvalidEvent("payload is not UTF-8") from exc
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise InvalidEvent(f"payload is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidEvent("payload is not a JSON object")
    if payload.get("Event") == "s3:TestEvent":
        return []
    raw_records = payload.get("Records")
    if not isinstance(raw_records, list):
        raise InvalidEvent("payload has no Records list")
    records = []
    for raw in raw_records:
        try:
            record = S3Record.model_validate(raw)
        except ValidationError as exc:
            raise InvalidEvent(f"malformed record: {exc.errors()[0]['msg']}") from exc
        records.append(_decoded(record))
    return records


def _decoded(record: S3Record) -> S3Record:
    obj = record.s3.object.model_copy(update={"key": unquote_plus(record.s3.object.key)})
    return record.model_copy(update={"s3": record.s3.model_copy(update={"object": obj})})
