"""The studio page's files and routes, in process (no servers): what is served, and how."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from bucketbrush.settings import Settings
from functions.http import create_app
from functions.studio_api import STUDIO_DIR
from gpu_runner.recipes import catalog

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client() -> TestClient:
    # Nothing here reaches Redis or the store: the broker and the S3 client connect lazily.
    settings = Settings(functions_token=SecretStr("t"), redis_url="redis://127.0.0.1:1/0",
                        s3_endpoint_url="http://127.0.0.1:1")
    return TestClient(create_app(settings, recipes=catalog()))


def test_the_page_and_its_files_are_served(client):
    index = client.get("/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js">' in index.text
    for name in ("app.js", "form.js"):
        assert client.get(f"/{name}").headers["content-type"].startswith("text/javascript")
    assert client.get("/style.css").headers["content-type"].startswith("text/css")
    # No catch-all: unknown paths stay 404 and the other routes keep their 405.
    assert client.get("/nope").status_code == 404 and client.get("/config.json").status_code == 404
    assert client.get("/presign").status_code == 405


def test_recipes_route_and_token(client):
    names = [r["name"] for r in client.get("/recipes").json()["recipes"]]
    assert "filter" in names and "test-slow" not in names  # test recipes only when asked for
    assert client.get("/studio/jobs").status_code == 401
    auth = {"Authorization": "Bearer t"}
    assert client.post("/studio/jobs/a.b/cancel", headers=auth).status_code == 400  # not a job id
    down = client.post("/studio/jobs/abc/cancel", headers=auth)  # the store cannot be reached
    assert down.status_code == 503 and "store did not answer" in down.json()["error"]
    assert client.get("/studio/jobs?limit=0", headers=auth).status_code == 400
    no_catalog = TestClient(create_app(Settings(functions_token=SecretStr("t"))))
    assert no_catalog.get("/recipes").status_code == 503


def test_assets_load_nothing_from_elsewhere_and_ship_in_the_wheel():
    files = sorted(p for p in STUDIO_DIR.iterdir() if p.is_file())
    assert {p.suffix for p in files} == {".html", ".js", ".css"}
    for path in files:
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", path.read_text()), path.name
        assert not re.search(r"import[^;]*[\"']https?://", path.read_text()), path.name
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["functions"]
    for path in files:
        assert any(fnmatch(f"studio/{path.name}", g) for g in globs), path.name
