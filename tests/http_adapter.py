"""A test-only stand-in for the Functions host's HTTP front: serves function_app's HTTP functions over
real HTTP on 127.0.0.1, so end-to-end tests can use an ordinary HTTP client.

What it does as the host does: routes ``/api/<route>`` by each function's httpTrigger binding (route
template with ``{name}`` parameters, methods), checks the function key for ``authLevel`` FUNCTION
(``code`` query parameter or ``x-functions-key`` header; 401 without it), and hands the function a
``func.HttpRequest`` with the query parameters, percent-decoded route parameters, headers and body.
What it does not: host.json settings, extensions, proxies, CORS.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func

ROUTE_PREFIX = "/api/"


@dataclass(frozen=True)
class Route:
    name: str
    pattern: re.Pattern[str]
    methods: frozenset[str]
    auth_level: str
    handler: Any


def routes(functions: Mapping[str, Any]) -> list[Route]:
    """The HTTP routes of registered functions (``{f.get_function_name(): f}``), most specific first."""
    out = []
    for name, fn in functions.items():
        for binding in fn.get_raw_bindings():
            b = binding if isinstance(binding, dict) else __import__("json").loads(binding)
            if b.get("type") != "httpTrigger":
                continue
            template = b.get("route") or name
            regex = "".join(
                f"(?P<{part[1:-1].split(':')[0]}>[^/]+)" if part.startswith("{") else re.escape(part)
                for part in re.split(r"(\{[^}]+\})", template)
                if part
            )
            out.append(
                Route(
                    name=name,
                    pattern=re.compile(regex),
                    methods=frozenset(m.upper() for m in b.get("methods") or ["GET", "POST"]),
                    auth_level=str(b.get("authLevel", "FUNCTION")).upper(),
                    handler=fn.get_user_function(),
                )
            )
    return sorted(out, key=lambda r: -len(re.sub(r"\(\?P<[^>]+>\[\^/\]\+\)", "", r.pattern.pattern)))


class FunctionsHost:
    """Serves the given functions at ``base_url`` (``http://127.0.0.1:<port>/api``) until stopped."""

    def __init__(self, functions: Mapping[str, Any], *, key: str = "test-function-key") -> None:
        self.routes = routes(functions)
        self.key = key
        self.calls: list[tuple[str, str, int]] = []  # (method, path, status)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FunctionsHost:
        handler = type("Handler", (_Handler,), {"host": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FunctionsHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/api"

    def dispatch(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        url = urlsplit(target)
        if not url.path.startswith(ROUTE_PREFIX):
            return 404, [], b""
        path = url.path[len(ROUTE_PREFIX) :]
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match is None or method not in route.methods:
                continue
            if route.auth_level != "ANONYMOUS" and self.key not in (params.get("code"), headers.get("x-functions-key")):
                return 401, [], b""
            req = func.HttpRequest(
                method,
                f"http://{headers.get('host', '127.0.0.1')}{target}",
                headers=dict(headers),
                params=params,
                route_params={k: unquote(v) for k, v in match.groupdict().items()},
                body=body,
            )
            resp = route.handler(req)
            out_headers = [(k, v) for k, v in resp.headers.items() if k.lower() != "content-type"]
            if resp.mimetype:
                charset = f"; charset={resp.charset}" if resp.charset else ""
                out_headers.append(("Content-Type", f"{resp.mimetype}{charset}"))
            return resp.status_code, out_headers, resp.get_body()
        return 404, [], b""


class _Handler(BaseHTTPRequestHandler):
    host: FunctionsHost
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out_headers, payload = self.host.dispatch(self.command, self.path, headers, body)
        self.host.calls.append((self.command, self.path, status))
        self.send_response(status)
        for name, value in out_headers:
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve
