"""The labelling page: a Starlette app over a `LabellingSession`, served by uvicorn on 127.0.0.1.

The page is static HTML, CSS and JavaScript (no build step, no template): every id, text, class
name or file name reaches the browser inside JSON and is put on the page with `textContent`, never
as HTML, and a Content-Security-Policy allows scripts from this server's /static/ only, so a caption
holding `<script>` shows as text. Requests that change anything must be JSON POSTs from this origin
(a page elsewhere cannot make the browser send one), and when the server is bound to a loopback
address it answers only to loopback host names (no DNS rebinding). Images are served from inside
`--media` only: the path is resolved (symlinks followed) and refused unless it stays inside.

API (JSON): GET /api/state?tab=T; POST /api/label {tab, id, label}; POST /api/skip {tab, id};
POST /api/undo {tab}. Each answers with what the tab shows next (see `LabellingSession`).
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import json
import socket
import time
from typing import Callable

from embedcache.datasets.base import IMAGE_SUFFIXES
from embedcache.workflow.labels import LabelsError
from embedcache.workflow.session import LabellingSession

STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def _static(name: str) -> bytes:
    return importlib.resources.files("embedcache.workflow").joinpath("static", name).read_bytes()


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def create_app(session: LabellingSession, loopback_only: bool = True):
    """The Starlette app. `loopback_only`: answer only requests addressed to a loopback host name."""
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    def error(message: str, status: int) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def page(request: Request) -> Response:
        return Response(_static("index.html"), media_type="text/html; charset=utf-8")

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return error("not found", 404)
        return Response(_static(name), media_type=STATIC_FILES[name])

    def run(action: Callable[[], dict]) -> JSONResponse:
        try:
            return JSONResponse(action())
        except LabelsError as e:
            return error(str(e), 400)

    def state(request: Request) -> JSONResponse:
        return run(lambda: session.view(str(request.query_params.get("tab", ""))))

    async def body(request: Request) -> dict | JSONResponse:
        """The JSON object of a same-origin POST, or the error response."""
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return error("send JSON (Content-Type: application/json)", 415)
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host')}":
            return error(f"requests from {origin} are not accepted", 403)
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error("the body is not JSON", 400)
        if not isinstance(data, dict) or not all(isinstance(data.get(k, ""), str) for k in ("tab", "id", "label")):
            return error("expected a JSON object of strings: tab, id, label", 400)
        return data

    def post(action: Callable[[dict], dict]):
        async def endpoint(request: Request) -> JSONResponse:
            from starlette.concurrency import run_in_threadpool

            data = await body(request)
            if isinstance(data, JSONResponse):
                return data
            try:
                # the answer goes out first; the full re-rank of the pool follows (see LabellingSession)
                return JSONResponse(await run_in_threadpool(action, data),
                                    background=BackgroundTask(session.complete_ranking))
            except LabelsError as e:
                return error(str(e), 400)
        return endpoint

    def media(request: Request) -> Response:
        root = session.media_root
        raw = request.path_params["path"]
        if root is None or "\x00" in raw or "\\" in raw or raw.startswith("/"):
            return error("not found", 404)
        try:
            resolved = (root / raw).resolve(strict=True)
        except (OSError, RuntimeError):
            return error("not found", 404)
        if not resolved.is_relative_to(root) or not resolved.is_file() or resolved.suffix.lower() not in IMAGE_SUFFIXES:
            return error("outside the media folder, or not an image", 403)
        return FileResponse(resolved, headers={"Content-Security-Policy": "sandbox; default-src 'none'"})

    middleware = [Middleware(_Headers)]
    if loopback_only:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_NAMES)))
    routes = [
        Route("/", page),
        Route("/static/{name}", static),
        Route("/api/state", state),
        Route("/api/label", post(lambda d: session.label(d.get("tab", ""), d.get("id", ""), d.get("label", ""))),
              methods=["POST"]),
        Route("/api/skip", post(lambda d: session.skip(d.get("tab", ""), d.get("id", ""))), methods=["POST"]),
        Route("/api/undo", post(lambda d: session.undo(d.get("tab", ""))), methods=["POST"]),
        Route("/media/{path:path}", media),
    ]
    return Starlette(routes=routes, middleware=middleware)


class _Headers:
    """ASGI middleware: the security headers on every response, and `Server-Timing: app;dur=<ms>`, the time
    from the request's arrival to the start of its answer (the full re-rank after it is not included)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import MutableHeaders

        started = time.perf_counter()

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
                headers["Server-Timing"] = f"app;dur={1e3 * (time.perf_counter() - started):.2f}"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def bind(host: str = "127.0.0.1", port: int = 8765) -> socket.socket:
    """A listening socket (port 0: any free one), so the URL is known before the server starts."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        from embedcache.errors import ConfigError

        raise ConfigError(f"cannot listen on {host} port {port}: {e.strerror}", param="host") from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def serve(app, sock: socket.socket) -> None:
    """Serve until interrupted (Ctrl-C)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
