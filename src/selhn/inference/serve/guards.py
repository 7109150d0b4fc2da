"""What stands before the application: only allowed hosts are answered, and request bodies are
counted as they arrive (refused past the limit, after a stall, or when too many arrive at once).
"""

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterable

LOOPBACK = ("localhost", "127.0.0.1", "::1")

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class BodyLimit:
    """Reads a request's body before the application sees it, counting the bytes received
    (chunked or not): 413 as soon as they pass ``limit``, 408 when the client sends nothing for
    ``timeout`` seconds, 503 while ``most`` other bodies are being received. So the memory that
    bodies hold is at most ``most`` times ``limit``, however slowly clients send."""

    def __init__(self, app: Callable, limit: int, message: str, timeout: float, most: int) -> None:
        self.app, self.limit, self.message = app, limit, message
        self.timeout, self.most, self.receiving = timeout, most, 0

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, 413, self.message)
        first = await receive()
        if first["type"] == "http.disconnect":
            return None
        if first.get("more_body", False):
            if self.receiving >= self.most:
                return await _send_error(send, 503, "too many uploads at once; try again")
            self.receiving += 1
            try:
                body = await self._rest(first, receive)
            except TimeoutError:
                message = f"the upload stalled: nothing received for {self.timeout:g} s"
                return await _send_error(send, 408, message)
            finally:
                self.receiving -= 1
        else:
            body = first.get("body", b"")
        if body is None:
            return None
        if len(body) > self.limit:
            return await _send_error(send, 413, self.message)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return await self.app(scope, replay, send)

    async def _rest(self, first: dict, receive: Receive) -> bytearray | None:
        """The whole body, or as much as passes the limit; None if the client went away."""
        body, message = bytearray(first.get("body", b"")), first
        while message.get("more_body", False) and len(body) <= self.limit:
            message = await asyncio.wait_for(receive(), self.timeout)
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
        return body


class AllowedHosts:
    """Answers only requests whose ``Host`` header names an allowed host (any port)."""

    def __init__(self, app: Callable, hosts: Iterable[str]) -> None:
        self.app, self.hosts = app, {h.lower().strip("[]") for h in hosts}

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.hosts:
            host = _hostname(_header(scope, b"host") or "")
            if host not in self.hosts:
                message = (
                    f"this server does not answer for host {host!r}; start it with "
                    "--allow-host NAME to allow a name"
                )
                return await _send_error(send, 400, message)
        return await self.app(scope, receive, send)


def _hostname(host: str) -> str:
    """The name of a ``Host`` header, without its port ("[::1]:8000" -> "::1"); "" unless what
    follows the name is a port number."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
    elif host.count(":") == 1:
        name, rest = host.split(":")[0], host[host.index(":") :]
    else:
        name, rest = host, ""
    return name if rest == "" or re.fullmatch(r":[0-9]{1,5}", rest) else ""
