"""An authenticating proxy in front of a real MLflow server, as platforms put an OAuth proxy there:
requests without `Authorization: Bearer <token>` get 401, the others pass through unchanged. It counts
what it let through and refused, and which MLflow workspaces the requests named."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from tests.fake_http import LocalServer

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-authorization", "te", "trailer", "upgrade"}


def bearer_proxy(upstream: str, token: str) -> LocalServer:
    """A LocalServer (use it as a context manager) forwarding to `upstream` when the token matches;
    `.seen` counts "accepted" and "refused", `.workspaces` the X-MLFLOW-WORKSPACE values passed on."""
    target = urlsplit(upstream)
    lock = threading.Lock()

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # the test asserts on counts, not on a log
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    chunk = self.rfile.read(size)
                    self.rfile.readline()
                    if size == 0:
                        return b"".join(parts)
                    parts.append(chunk)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self) -> None:
            body = self._body()
            if self.headers.get("Authorization") != f"Bearer {token}":
                with lock:
                    self.server.seen["refused"] += 1
                reply = b'{"error_code": "UNAUTHENTICATED", "message": "bearer token required"}'
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                return
            with lock:
                self.server.seen["accepted"] += 1
                self.server.workspaces[self.headers.get("X-MLFLOW-WORKSPACE", "")] += 1
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP | {"host", "authorization"}}
            headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=300)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in _HOP | {"content-length"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    server = LocalServer(Proxy)
    server.seen = Counter()
    server.workspaces = Counter()
    return server
