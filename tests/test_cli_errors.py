"""Every CLI failure is one line on stderr and a non-zero exit, never a traceback.

Run in process through ``bucketbrush.cli.main`` with the stack down: the store and Redis
point at loopback ports where nothing listens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bucketbrush.cli import main
from tests.helpers import refused_port


@pytest.fixture
def down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No stack: an empty state dir, and store and Redis URLs where nothing answers."""
    monkeypatch.chdir(tmp_path)  # no .env, no .bucketbrush/ of a developer's own
    monkeypatch.setenv("BUCKETBRUSH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("BUCKETBRUSH_S3_ENDPOINT_URL", f"http://127.0.0.1:{refused_port()}")
    monkeypatch.setenv("BUCKETBRUSH_S3_ACCESS_KEY", "ak")
    monkeypatch.setenv("BUCKETBRUSH_S3_SECRET_KEY", "sk")
    monkeypatch.setenv("BUCKETBRUSH_REDIS_URL", f"redis://127.0.0.1:{refused_port()}/0")
    monkeypatch.delenv("BUCKETBRUSH_MODELS_FILE", raising=False)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "one.png").write_bytes(b"\x89PNG")
    return tmp_path


CASES = [
    # (argv, exit code, code in "error [CODE]", words in the message)
    (["submit", "missing.jpg", "--recipe", "filter"], 2, "not_found", "no such file: missing.jpg"),
    (["submit", "empty.png", "--recipe", "filter"], 2, "empty_input", "empty"),
    (["submit", ".", "--recipe", "filter"], 2, "file_error", "directory"),
    (["submit", "one.png", "--recipe", "filter"], 2, "store_unavailable", "bucketbrush up"),
    (["presign", "Bad Recipe!"], 2, "invalid_params", "invalid recipe name"),
    (["presign", "filter", "--content-type", "text/plain"], 2, "invalid_params", "image/*"),
    (["jobs", "list"], 2, "store_unavailable", "did not answer"),
    (["jobs", "show", "abc"], 2, "store_unavailable", "did not answer"),
    (["jobs", "download", "abc"], 2, "store_unavailable", "did not answer"),
    (["jobs", "cancel", "abc"], 2, "store_unavailable", "did not answer"),
    (["jobs", "retry", "abc"], 2, "store_unavailable", "did not answer"),
    (["jobs", "delete", "abc"], 2, "store_unavailable", "did not answer"),
    (["gallery", "deleted"], 2, "store_unavailable", "did not answer"),
    (["infra", "apply"], 2, "store_unavailable", "did not answer"),
    (["sweep"], 2, "store_unavailable", "did not answer"),
    (["sweep", "--under", "outputs/"], 1, None, "'outputs/' is in no input folder (inbox/, jobs/, conversations/)"),
    (["models", "list"], 1, None, "no models file"),
    (["events", "sqs"], 1, None, "no queue"),
    (["gallery", "restore"], 1, None, "needs a JOB_ID"),
    (["presign", "filter", "--param", "style"], 1, None, "--param wants NAME=VALUE"),
]


@pytest.mark.parametrize(("argv", "status", "code", "words"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_errors_are_one_line(down: Path, capsys: pytest.CaptureFixture[str], argv: list[str], status: int,
                             code: str | None, words: str) -> None:
    try:
        got = main(argv)
    except SystemExit as exc:  # argparse-style usage errors: the message is the exit argument
        got, err = 1, str(exc.code)
    else:
        err = capsys.readouterr().err
    assert got == status, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    if code:
        assert lines[0].startswith(f"error [{code}]: "), lines[0]
    assert words in lines[0], lines[0]


def test_bad_setting_is_one_line(down: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BUCKETBRUSH_LOCAL_REDIS", "sometimes")
    assert main(["up"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error [invalid_settings]: local_redis: ") and "\n" not in err


def test_down_with_nothing_running_is_fine(down: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["down"]) == 0
    assert "nothing to stop" in capsys.readouterr().out


def test_verbose_shows_the_traceback(down: Path) -> None:
    with pytest.raises(FileNotFoundError):
        main(["-v", "submit", "missing.jpg", "--recipe", "filter"])


def test_status_with_everything_down_names_each_part(down: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 1
    out = capsys.readouterr().out
    assert "store " in out and "broker " in out and out.count("UNREACHABLE") == 2, out
    assert "Traceback" not in out


def test_models_without_a_file_points_at_the_readme(down: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["models", "list"])
    assert "README" in str(exc.value.code) and "infra/models.example.toml" in str(exc.value.code)


def test_runner_without_models_points_at_the_readme() -> None:
    from bucketbrush.errors import ModelUnavailable
    from gpu_runner.recipes.base import JobContext
    from gpu_runner.recipes.diffusion import model_cache

    with pytest.raises(ModelUnavailable) as exc:
        model_cache(JobContext("job"))
    assert "README, section Models" in str(exc.value) and "infra/models.example.toml" in str(exc.value)
    assert "environment of `bucketbrush up`" in str(exc.value) and ".env" in str(exc.value)
