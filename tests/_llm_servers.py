"""Local HTTP servers on 127.0.0.1 that answer in OpenAI's and Anthropic's wire formats.

Each server plays a script: one reply per request, in order (the last one
repeats). A reply is ("ok", body-dict), ("status", code, error-dict),
("sleep", seconds) or ("raw", code, text). Requests are kept for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedServer:
    def __init__(self, script: list[tuple[Any, ...]], path: str) -> None:
        self.script = list(script)
        self.path = path
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with owner._lock:
                    owner.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "json": json.loads(body or b"{}")})
                    reply = owner.script.pop(0) if len(owner.script) > 1 else owner.script[0]
                if self.path.rstrip("/") != owner.path:
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                kind = reply[0]
                if kind == "sleep":
                    time.sleep(reply[1])
                    return self._send(200, {})
                if kind == "ok":
                    return self._send(200, reply[1])
                if kind == "status":
                    return self._send(reply[1], reply[2], {"retry-after-ms": "1", "retry-after": "0"})
                if kind == "raw":
                    data = reply[2].encode()
                    self.send_response(reply[1])
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def _send(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- OpenAI chat completions ---------------------------------------------------
def openai_server(script: list[tuple[Any, ...]]) -> ScriptedServer:
    return ScriptedServer(script, "/v1/chat/completions")


def openai_tool_call(name: str, arguments: str, *, prompt: int = 120, completion: int = 18) -> tuple[str, dict[str, Any]]:
    return ("ok", {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1764200000, "model": "gpt-4.1-mini",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}]}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })  # fmt: skip


def openai_content(content: str, *, prompt: int = 90, completion: int = 12) -> tuple[str, dict[str, Any]]:
    return ("ok", {
        "id": "chatcmpl-2", "object": "chat.completion", "created": 1764200000, "model": "gpt-4.1-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })  # fmt: skip


def openai_error(code: int, message: str = "slow down") -> tuple[Any, ...]:
    return ("status", code, {"error": {"message": message, "type": "rate_limit_error" if code == 429 else "server_error",
                                       "code": None, "param": None}})  # fmt: skip


# -- Anthropic messages --------------------------------------------------------
def anthropic_server(script: list[tuple[Any, ...]]) -> ScriptedServer:
    return ScriptedServer(script, "/v1/messages")


def anthropic_tool_use(name: str, input: Any, *, prompt: int = 140, completion: int = 22) -> tuple[str, dict[str, Any]]:
    return ("ok", {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": name, "input": input}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": completion},
    })  # fmt: skip


def anthropic_text(text: str) -> tuple[str, dict[str, Any]]:
    return ("ok", {
        "id": "msg_2", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 50, "output_tokens": 5},
    })  # fmt: skip


def anthropic_error(code: int, kind: str = "overloaded_error") -> tuple[Any, ...]:
    return ("status", code, {"type": "error", "error": {"type": kind, "message": "try again"}})
