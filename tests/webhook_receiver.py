"""A webhook receiver for the tests, run as its own process: verifies each POST with the
``standardwebhooks`` verifier and logs it (one JSON line per request).

Behaviour by path: ``/ok/...`` answers 204; ``/flaky/<n>/...`` answers 503 (``Retry-After: 0``)
to the first ``n`` requests with the same webhook-id, then 204; ``/gone/...`` answers 410.

    python tests/webhook_receiver.py SECRET LOG_FILE PORT_FILE
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from standardwebhooks import Webhook, WebhookVerificationError


def main() -> None:
    secret, log_file, port_file = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    verifier = Webhook(secret)
    seen: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                verifier.verify(body, headers)
                verified, error = True, None
            except WebhookVerificationError as exc:
                verified, error = False, str(exc)
            parts = self.path.strip("/").split("/")
            with lock:
                seen[(self.path, headers.get("webhook-id", ""))] += 1
                count = seen[(self.path, headers.get("webhook-id", ""))]
            status, extra = 204, {}
            if parts[0] == "flaky" and count <= int(parts[1]):
                status, extra = 503, {"Retry-After": "0"}
            elif parts[0] == "gone":
                status = 410
            record = {"path": self.path, "headers": headers, "body": body.decode(), "verified": verified,
                      "error": error, "status": status, "received_at": time.time()}
            with lock, log_file.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_file.write_text(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
