"""How a job's params are resolved from upload metadata and the job spec."""

from __future__ import annotations

import json

import pytest

from bucketbrush.errors import InvalidParams
from gpu_runner.recipes import get_recipe
from gpu_runner.runner import resolve_params

FILTER = get_recipe("filter")


def test_single_metadata_fields_fill_what_the_json_leaves_out() -> None:
    params = resolve_params(FILTER, {}, {"params": json.dumps({"style": "noir"}), "intensity": "0.5"})
    assert (params.style, params.intensity) == ("noir", 0.5)


def test_the_signed_json_wins_over_a_single_field() -> None:
    params = resolve_params(FILTER, {}, {"params": json.dumps({"style": "noir"}), "style": "sepia"})
    assert params.style == "noir"


def test_presigned_uploads_take_only_the_signed_json() -> None:
    metadata = {"params": json.dumps({"style": "noir"}), "intensity": "0.5", "style": "sepia"}
    params = resolve_params(FILTER, {}, metadata, single_fields=False)
    assert (params.style, params.intensity) == ("noir", FILTER.params().intensity)


def test_the_spec_wins_over_metadata() -> None:
    params = resolve_params(FILTER, {"style": "hdr"}, {"params": json.dumps({"style": "noir"}), "style": "sepia"})
    assert params.style == "hdr"


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]"])
def test_bad_params_json_is_invalid_params(raw: str) -> None:
    with pytest.raises(InvalidParams, match="x-amz-meta-params"):
        resolve_params(FILTER, {}, {"params": raw})
