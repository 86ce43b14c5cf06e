"""A local HTTP server in a thread, and a JSON-answering handler: the shared frame of the tests' FAKE
Kubernetes APIs (tests/test_cluster_launch.py, tests/test_cluster_vllm_server.py). Each test module
writes only the paths it answers."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalServer(ThreadingHTTPServer):
    """Serves `handler` on 127.0.0.1 (a free port) while used as a context manager."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        super().__init__(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()

    def client(self):
        """A real `kubernetes` ApiClient pointed at this server."""
        import kubernetes

        conf = kubernetes.client.Configuration()
        conf.host = self.url
        return kubernetes.client.ApiClient(conf)


class JsonHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, code: int, body, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
