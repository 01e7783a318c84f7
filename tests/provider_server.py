"""A stand-in for the three remote inference providers (gpu_runner/providers.py), answering with
the request and answer shapes their documentation gives. A real HTTP server in its own process
(``python -m tests.provider_server``); the model id picks the behaviour.

- ``/hf/<model>``: the Hugging Face Inference API's text-to-image task
  (https://huggingface.co/docs/inference-providers/tasks/text-to-image): ``{"inputs",
  "parameters"}`` in, image bytes out; ``503 {"error": "Model ... is currently loading",
  "estimated_time": s}`` while loading (the classic api-inference docs, "Model loading"),
  ``429`` with ``Retry-After``, errors as ``{"error": message}``.
  Models: ``acme/sdxl`` (answers), ``acme/loading...`` (503 once per model id, then answers),
  ``acme/cold`` (always loading, 30 s), ``acme/busy...`` (429 with Retry-After: 1 once per
  model id), ``acme/broken`` (400).
- ``/openai/v1/images/generations`` (https://platform.openai.com/docs/api-reference/images/create):
  ``{"created", "data": [{"b64_json"}]}``; model ``dall-e-bad``: ``400 {"error": {"message",
  "type": "invalid_request_error", "param": "size", "code": null}}``.
- ``/replicate/v1/models/<owner>/<name>/predictions`` and ``/replicate/v1/predictions/<id>``
  (https://replicate.com/docs/reference/http, https://replicate.com/docs/topics/predictions):
  the prediction object (``id``, ``status``, ``urls.get``, ``output``, ``error``, ``metrics``),
  ``starting`` when created, ``processing`` on the first poll, then final; the outputs are
  served under ``/replicate/files/``. Model ``acme/nsfw`` ends ``failed``.

With ``--key`` it answers 401 to API requests without ``Authorization: Bearer <key>`` (file
downloads take no key, as replicate.delivery's). Each request is appended to ``--log`` (JSON
lines: method, path, auth, body, time).

An image's colour comes from its seed (grey 128 without one), so tests can tell them apart.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from PIL import Image


def png(width: int, height: int, seed: int | None) -> bytes:
    color = (128, 128, 128) if seed is None else (seed % 256, (seed >> 8) % 256, (seed >> 16) % 256)
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, int] = {}  # model -> requests so far
        self.predictions: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}

    def count(self, key: str) -> int:
        with self.lock:
            self.seen[key] = self.seen.get(key, 0) + 1
            return self.seen[key]


def make_handler(key: str | None, log: Path | None, state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _log(self, body: object) -> None:
            if log is not None:
                with state.lock, log.open("a") as fh:
                    fh.write(json.dumps({"method": self.command, "path": self.path, "time": time.time(),
                                         "auth": self.headers.get("Authorization"), "body": body}) + "\n")

        def _authorized(self) -> bool:
            if key and self.headers.get("Authorization") != f"Bearer {key}":
                self._send(401, {"error": "Invalid credentials in Authorization header"})
                return False
            return True

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            self._log(None)
            if self.path.startswith("/replicate/files/"):
                data = state.files.get(self.path.rsplit("/", 1)[-1])
                return self._send(200, data, "image/png") if data else self._send(404, {"detail": "Not found"})
            if not self._authorized():
                return None
            if self.path.startswith("/replicate/v1/predictions/"):
                return self._poll(self.path.rsplit("/", 1)[-1])
            return self._send(404, {"detail": "Not found"})

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.loads(raw or b"null")
            self._log(body)
            if not self._authorized():
                return None
            if self.path.startswith("/hf/"):
                return self._hf(self.path[len("/hf/"):], body)
            if self.path == "/openai/v1/images/generations":
                return self._openai(body)
            if self.path.startswith("/replicate/v1/models/") and self.path.endswith("/predictions"):
                model = self.path[len("/replicate/v1/models/"):-len("/predictions")]
                return self._create(model, body)
            return self._send(404, {"error": "not found"})

        # -- hf-inference -----------------------------------------------------------------

        def _hf(self, model: str, body: dict) -> None:
            n = state.count(model)
            if model == "acme/cold" or (model.startswith("acme/loading") and n == 1):
                return self._send(503, {"error": f"Model {model} is currently loading",
                                        "estimated_time": 30.0 if model == "acme/cold" else 0.5})
            if model.startswith("acme/busy") and n == 1:
                return self._send(429, {"error": "Rate limit reached. Please retry later."},
                                  headers={"Retry-After": "1"})
            if model == "acme/broken":
                return self._send(400, {"error": "Input validation error: `inputs` cannot be empty"})
            if not model.startswith(("acme/sdxl", "acme/loading", "acme/busy")):
                return self._send(404, {"error": f"Model {model} does not exist"})
            p = body.get("parameters") or {}
            self._send(200, png(p.get("width", 64), p.get("height", 64), p.get("seed")), "image/png")

        # -- openai-images ----------------------------------------------------------------

        def _openai(self, body: dict) -> None:
            if body.get("model") == "dall-e-bad":
                return self._send(400, {"error": {"message": "Invalid value for 'size': must be one of 256x256, "
                                                             "512x512, 1024x1024.", "type": "invalid_request_error",
                                                  "param": "size", "code": None}})
            width, height = (int(v) for v in body["size"].split("x"))
            data = [{"b64_json": base64.b64encode(png(width, height, None)).decode(), "revised_prompt": body["prompt"]}
                    for _ in range(body.get("n", 1))]
            self._send(200, {"created": int(time.time()), "data": data})

        # -- replicate --------------------------------------------------------------------

        def _create(self, model: str, body: dict) -> None:
            pid = uuid.uuid4().hex[:26]
            base = f"http://{self.headers['Host']}/replicate"
            prediction = {"id": pid, "model": model, "version": "hidden", "input": body["input"], "logs": "",
                          "output": None, "error": None, "status": "starting", "created_at": "2026-11-30T00:00:00Z",
                          "urls": {"get": f"{base}/v1/predictions/{pid}",
                                   "cancel": f"{base}/v1/predictions/{pid}/cancel"}}
            state.predictions[pid] = {"prediction": prediction, "polls": 0, "base": base}
            self._send(201, prediction)

        def _poll(self, pid: str) -> None:
            entry = state.predictions.get(pid)
            if entry is None:
                return self._send(404, {"title": "Not found", "detail": "Prediction not found", "status": 404})
            entry["polls"] += 1
            p = entry["prediction"]
            if entry["polls"] == 1:
                p["status"] = "processing"
            elif p["status"] == "processing":
                if p["model"] == "acme/nsfw":
                    p.update(status="failed", error="NSFW content detected. Try running it again, or try a "
                                                    "different prompt.")
                else:
                    inp, outputs = p["input"], []
                    for i in range(inp.get("num_outputs", 1)):
                        name = f"{pid}-{i}.png"
                        seed = inp.get("seed")
                        state.files[name] = png(inp.get("width", 64), inp.get("height", 64),
                                                None if seed is None else seed + i)
                        outputs.append(f"{entry['base']}/files/{name}")
                    p.update(status="succeeded", output=outputs, metrics={"predict_time": 1.234, "total_time": 1.5})
            self._send(200, p)

        def _send(self, status: int, doc: object, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main() -> None:
    from tests import openai_server

    openai_server.main(lambda key, log: make_handler(key, log, State()))


if __name__ == "__main__":
    main()
