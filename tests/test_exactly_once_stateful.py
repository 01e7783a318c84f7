"""A Hypothesis state machine drives the real handler and sweep against the session stack with
the event source stopped, so it alone decides which events arrive: delivered, delivered
again (duplicates), delivered after the job finished (late), or never (lost, left to the
sweep). Whatever the interleaving: one job per upload, one final manifest each, the runner ran
each once, and the outputs are the ones the manifest lists."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bucketbrush.jobs import ObjectRef, job_id_for
from bucketbrush.samples import landscape
from functions.events import S3Record
from functions.handler import Handler
from functions.sweep import reconcile
from tests.helpers import check_outputs, png_bytes, wait_final
from tests.test_exactly_once import event_source_stopped, runs_of

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def machine_env(stack, settings, bucket):
    with event_source_stopped(stack):
        yield stack, settings, bucket, Handler.from_settings(settings)


def test_handler_and_sweep_with_duplicate_late_and_lost_events(machine_env):
    stack, app_settings, bucket, handler = machine_env

    class Events(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.run_id = uuid.uuid4().hex[:8]
            self.refs: list[ObjectRef] = []
            self.delivered: set[int] = set()

        @rule(shade=st.integers(0, 255), same_key=st.booleans())
        def upload(self, shade: int, same_key: bool) -> None:
            """A new upload: new content, at a new key or over the previous key (a new job either way)."""
            image = landscape(20, 14)
            image.putpixel((0, 0), (shade, len(self.refs) % 256, 3))
            body = png_bytes(image)
            if same_key and self.refs:
                key = self.refs[-1].key
                if len(self.refs) - 1 not in self.delivered:
                    # Overwritten before any event named it (and no version kept): that content
                    # is gone, and no transport or sweep can make a job of it any more.
                    self.refs.pop()
            else:
                key = f"inbox/filter/stateful/{self.run_id}/{uuid.uuid4().hex[:6]}.png"
            put = bucket.s3.put_object(Bucket=bucket.name, Key=key, Body=body, Metadata={"style": "sepia"})
            ref = ObjectRef(bucket=bucket.name, key=key, etag=put["ETag"].strip('"'), size=len(body))
            if ref.identity not in {r.identity for r in self.refs}:  # the same bytes again: the same job
                self.refs.append(ref)

        @precondition(lambda self: self.refs)
        @rule(data=st.data(), times=st.integers(1, 3))
        def deliver(self, data: st.DataObject, times: int) -> None:
            """The upload's event, once or repeated (a transport's duplicates, a late redelivery)."""
            i = data.draw(st.integers(0, len(self.refs) - 1))
            for _ in range(times):
                handler.handle([S3Record.created("stateful", self.refs[i])])
            self.delivered.add(i)

        @precondition(lambda self: self.refs)
        @rule(data=st.data())
        def finish_then_redeliver(self, data: st.DataObject) -> None:
            """A late event: delivered again after its job is final."""
            i = data.draw(st.integers(0, len(self.refs) - 1))
            if i in self.delivered:
                manifest = wait_final(bucket, job_id_for(self.refs[i]))
                handler.handle([S3Record.created("stateful", self.refs[i])])
                assert bucket.read_manifest(manifest.job_id).updated_at == manifest.updated_at

        @rule()
        def sweep(self) -> None:
            """The reconciling sweep, concurrent with everything else (its grace: none)."""
            reconcile(app_settings, bucket, handler, grace_s=0)

        @invariant()
        def at_most_one_job_per_upload(self) -> None:
            ids = [job_id_for(r) for r in self.refs]
            assert len(set(ids)) == len(ids)

        def teardown(self) -> None:
            # Lost events: whatever was never delivered, the sweep finds.
            reconcile(app_settings, bucket, handler, grace_s=0)
            for ref in self.refs:
                manifest = wait_final(bucket, job_id_for(ref), timeout=60)
                assert manifest.status == "succeeded", manifest.error
                assert manifest.inputs[0].identity == ref.identity
                check_outputs(bucket, manifest)
                assert runs_of(stack, manifest.job_id) == 1, manifest.job_id
                # Outputs are exactly those the manifest lists.
                listed = bucket.s3.list_objects_v2(Bucket=bucket.name, Prefix=bucket.output_key(manifest.job_id, ""))
                keys = sorted(o["Key"] for o in listed.get("Contents", []))
                assert keys == sorted(o.key for o in manifest.outputs)
                assert all(hashlib.sha256(b"").hexdigest() != o.sha256 for o in manifest.outputs)

    Events.TestCase.settings = settings(max_examples=5, stateful_step_count=6, deadline=None, database=None,
                                        suppress_health_check=list(HealthCheck))
    Events.TestCase().runTest()
