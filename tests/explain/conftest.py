"""A fake OpenAI-compatible chat-completions server (real HTTP on 127.0.0.1) for the explain tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

# A small model's reply seen in the wild (SmolLM2-135M explaining a feature): a generation loop.
LOOP = (
    "Attribute matching: The marked tokens match the attribute matching the type of the value "
    "matching the type"
)


class Behaviour:
    """What the fake server does next; the test changes it between requests."""

    def __init__(self) -> None:
        self.failures_left = 0
        self.mode = "logprobs"
        self.requests: list[dict[str, Any]] = []


def completion(content: str, logprobs: Any = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content}}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return {"id": "x", "object": "chat.completion", "choices": [choice]}


@pytest.fixture
def endpoint() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            behaviour.requests.append(body)
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": "not found"})
            if behaviour.failures_left:
                behaviour.failures_left -= 1
                return self._send(503, {"error": "overloaded"})
            if behaviour.mode == "slow":
                time.sleep(1.5)
            if behaviour.mode == "garbage":
                return self._send(200, {"unexpected": True})
            if body.get("logprobs") and behaviour.mode == "logprobs":
                top = [
                    {"token": "Yes", "logprob": -0.2231},
                    {"token": "No", "logprob": -1.6094},
                    {"token": "Maybe", "logprob": -5.0},
                ]
                return self._send(
                    200, completion("Yes", {"content": [{"token": "Yes", "top_logprobs": top}]})
                )
            if behaviour.mode == "loop" and not body.get("logprobs"):
                return self._send(200, completion(f"Explanation: {LOOP}"))
            if behaviour.mode == "rambling":
                return self._send(200, completion("Well, it depends"))
            if body.get("logprobs"):
                return self._send(200, completion("No."))
            return self._send(200, completion("Thinking about it...\nExplanation: dates in prose"))

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout case)
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", behaviour
    server.shutdown()
