"""A request body size limit for the MONAI Label server (uploads through /session/, /datastore/, /infer/...).

MONAI Label has no such limit and builds its FastAPI middleware before an app is loaded, so the limit wraps the
server's built ASGI stack instead of using ``add_middleware``. A request whose Content-Length is above the limit, or
whose streamed body grows past it, gets HTTP 413 naming the limit before anything reaches the disk.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Awaitable, Callable, MutableMapping

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


class UploadLimit:
    """ASGI wrapper refusing HTTP request bodies larger than ``limit_bytes``."""

    def __init__(self, app: Callable, limit_bytes: int):
        self.app = app
        self.limit_bytes = limit_bytes

    def _message(self) -> str:
        return f"request body exceeds the upload limit of {self.limit_bytes / 2**20:g} MB (--conf max_upload_mb)"

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": self._message()}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit_bytes:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)


def install(limit_bytes: int) -> bool:
    """Wrap the running MONAI Label server's ASGI stack (idempotent). False where no server runs in this process
    (e.g. a training subprocess that loads the app)."""
    module = sys.modules.get("monailabel.app")
    if module is None:
        return False
    server = module.app
    stack = server.middleware_stack or server.build_middleware_stack()
    if isinstance(stack, UploadLimit):
        stack.limit_bytes = limit_bytes
    else:
        server.middleware_stack = UploadLimit(stack, limit_bytes)
    return True
