"""A small OpenAI-compatible chat-completions server for the ``openai`` refiner's tests and bench.

A real HTTP server in its own process (``python -m tests.openai_server``). The ``model`` field of
each request picks how it answers, so one server covers every case:

- ``rules``: a valid answer, made by the rules refiner from the request (a well-behaved model);
- ``canned``: ``{"intent": "stylize", "style": "anime", "prompt": "from the server"}``;
- ``fenced``: the canned answer inside a Markdown code fence;
- ``badjson``: prose instead of JSON;  ``unknown``: an intent outside the vocabulary;
- ``badstyle``: a style that is no preset;  ``notchat``: a body that is not chat-completions;
- ``slow``: the canned answer after 3 s;  ``error``: HTTP 500.

With ``--key`` it answers 401 to requests without ``Authorization: Bearer <key>``. Every
request body is appended to ``--log`` (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CANNED = {"intent": "stylize", "style": "anime", "prompt": "from the server", "negative_prompt": ""}


def answer_for(model: str, request_text: str, has_image: bool) -> tuple[int, object]:
    if model == "error":
        return 500, {"error": {"message": "boom"}}
    if model == "notchat":
        return 200, {"hello": "world"}
    if model == "rules":
        from gpu_runner.refine.rules import RulesRefiner

        r = RulesRefiner().refine(request_text, has_image=has_image)
        content = json.dumps({"intent": r.intent, "prompt": r.params.get("prompt", ""),
                              "style": r.params.get("style") if r.intent == "stylize" else None,
                              "answer": r.answer})
    elif model == "canned" or model == "slow":
        if model == "slow":
            time.sleep(3)
        content = json.dumps(CANNED)
    elif model == "fenced":
        content = "```json\n" + json.dumps(CANNED) + "\n```"
    elif model == "badjson":
        content = "Sure! The intent is generate and the prompt is a cat."
    elif model == "unknown":
        content = json.dumps({"intent": "dance", "prompt": "x"})
    elif model == "badstyle":
        content = json.dumps({"intent": "stylize", "style": "vaporwave-deluxe"})
    else:
        return 404, {"error": {"message": f"no model {model!r}"}}
    return 200, {"id": "cmpl-test", "object": "chat.completion", "model": model,
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": content}}]}


def make_handler(key: str | None, log: Path | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if log is not None:
                with log.open("a") as fh:
                    fh.write(json.dumps({"path": self.path, "auth": self.headers.get("Authorization"),
                                         "body": json.loads(body or b"null")}) + "\n")
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": "not found"}})
            if key and self.headers.get("Authorization") != f"Bearer {key}":
                return self._send(401, {"error": {"message": "bad key"}})
            request = json.loads(body)
            user = request["messages"][-1]["content"]
            text = re.search(r"Request: (.*)$", user, re.S)
            status, doc = answer_for(request.get("model", ""), text.group(1) if text else user,
                                     "has a picture" in user)
            self._send(status, doc)

        def _send(self, status: int, doc: object) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main(make: Callable[[str | None, Path | None], type[BaseHTTPRequestHandler]] = make_handler) -> None:
    """Serve ``make(key, log)``'s handler on loopback (tests/provider_server.py serves its own)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key")
    parser.add_argument("--log", type=Path)
    parser.add_argument("--ready-file", type=Path, required=True, help="the port is written here once listening")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make(args.key, args.log))
    args.ready_file.write_text(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
