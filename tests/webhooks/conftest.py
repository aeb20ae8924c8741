"""Webhook fixtures: made-up host names that resolve where a test says, endpoints for each persona,
and a real HTTP receiver on 127.0.0.1 (private targets allowed) that can answer 500, hang or flood."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from webhooks import services

PUBLIC_IP = "93.184.215.14"
ADDRESSES = {
    "internal.example": ["127.0.0.1"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": [PUBLIC_IP, "10.0.0.7"],
}


@pytest.fixture(autouse=True)
def dns(monkeypatch) -> dict[str, list[str]]:
    """The one seam: host names under .example resolve as ADDRESSES says (public otherwise)."""
    from webhooks import net

    real = net.resolve

    def resolve(host: str, port: int) -> list[str]:
        if host.endswith(".example"):
            return ADDRESSES.get(host, [PUBLIC_IP])
        return real(host, port)

    monkeypatch.setattr(net, "resolve", resolve)
    return ADDRESSES


def register(actor, url="https://hooks.partner.example/in", events=None, **kwargs):
    return services.endpoint_create(actor=actor, url=url, events=events or ["agreement.sent"], **kwargs)


@dataclass
class Receiver:
    """What the receiver answers (`mode`) and every request it got (headers, body)."""

    port: int = 0
    mode: str = "ok"  # ok | error | hang | huge | redirect
    requests: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"


@pytest.fixture
def receiver(settings) -> Iterator[Receiver]:
    settings.WEBHOOKS_ALLOW_PRIVATE_TARGETS = True
    settings.DEBUG = True  # http:// is accepted only with DEBUG on
    settings.WEBHOOKS_TIMEOUT_SECONDS = 1.0
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.requests.append(
                {"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body, "path": self.path}
            )
            if state.mode == "hang":
                time.sleep(3)
                return
            if state.mode == "redirect":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()
                return
            if state.mode == "huge":
                self.send_response(200)
                self.send_header("Content-Length", str(10 * 2**20))
                self.end_headers()
                try:
                    for _ in range(10 * 16):
                        self.wfile.write(b"x" * 65536)
                except OSError:
                    pass  # the sender hung up after 64 KB, as it should
                return
            code = 500 if state.mode == "error" else 200
            answer = b'{"oops": "receiver broke"}' if code == 500 else b"ok"
            self.send_response(code)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
