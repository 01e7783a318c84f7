"""The fault tests' own stack: they kill and restart its processes, so it is never the session
``stack`` other tests share."""

from __future__ import annotations

import pytest

from bucketbrush.settings import Settings
from bucketbrush.store import Bucket
from infra.local import LocalStack
from tests.faults.chaos import fault_stack


@pytest.fixture(scope="session")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    with fault_stack(tmp_path_factory.mktemp("faults")) as stack:
        yield stack


@pytest.fixture
def chaos_settings(chaos: LocalStack) -> Settings:
    return chaos.settings_for_clients()


@pytest.fixture
def chaos_bucket(chaos_settings: Settings) -> Bucket:
    return Bucket(chaos_settings)
