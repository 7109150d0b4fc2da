"""Helpers of the ``selhn serve`` tests: a real server in its own process, requests to it."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOGS: dict[int, list[str]] = {}  # what each server printed, by pid, read as it comes


@contextlib.contextmanager
def running_server(index: Path, *options: str) -> Iterator[tuple[tuple[str, int], int]]:
    """``selhn serve --index INDEX OPTIONS`` on a free loopback port: ((host, port), pid); its
    output (the access log among it) is collected in ``LOGS[pid]``."""
    port = free_port()
    command = [sys.executable, "-m", "selhn", "serve", "--index", str(index), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--device", "cpu", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    printed = LOGS.setdefault(process.pid, [])
    reader = threading.Thread(target=lambda: printed.extend(process.stdout), daemon=True)
    reader.start()
    address = ("127.0.0.1", port)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if request(address, "GET", "/api/info")[0] == 200:
                break
        except OSError:
            if process.poll() is not None:
                reader.join(5)
                raise AssertionError(f"selhn serve stopped: {''.join(printed)}") from None
            time.sleep(0.3)
    else:
        process.kill()
        reader.join(5)
        raise AssertionError(f"selhn serve did not start: {''.join(printed)}")
    try:
        yield address, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def request(address, method, path, body=None, headers=None):
    """(status, parsed JSON or raw bytes, content type); ``path`` is sent as written."""
    connection = http.client.HTTPConnection(*address, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data, kind = response.read(), response.getheader("content-type", "")
        return response.status, json.loads(data) if "json" in kind else data, kind
    finally:
        connection.close()


def multipart(content: bytes, filename: str) -> tuple[bytes, dict[str, str]]:
    """A multipart body with one ``file`` field, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; "
        f'name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = head + content + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def upload(address, path: Path | None, k=5, data=None, name="image.png", extra=""):
    """POST /api/search with a multipart ``file``: the file at ``path``, or ``data``;
    ``extra``: more of the query string ("&modality=text")."""
    content = path.read_bytes() if path is not None else data
    body, headers = multipart(content, path.name if path is not None else name)
    return request(address, "POST", f"/api/search?k={k}{extra}", body, headers)


def resident_mb(pid: int) -> float:
    """The resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")
