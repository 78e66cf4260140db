"""A second local user racing for the Chromium engine (run as `nobody` by engine_race.py;
standard library only, for Debian's own python3).

It does what any local user can: reads the command line of every Chromium process in
/proc, the listening sockets in /proc/net/tcp (and tcp6), and then tries every loopback
port it finds: the engine page with and without every token-looking string seen, the
control and peer WebSockets, the DevTools pipe's fds in /proc, the browser's profile. It
keeps what it claims (a WebSocket stays open). It stops when its stdin closes and prints
one JSON object of what it saw and got.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import sys
import time
import urllib.error
import urllib.request

URL = re.compile(r"https?://[^\s\x00]+")
TOKEN = re.compile(r"[?&]t=([A-Za-z0-9_\-]+)")
SESSION = re.compile(r'const TOKEN = "([^"]+)"')

seen: dict[str, object] = {
    "uid": os.getuid(),
    "chromium_processes": 0,
    "chromium_users": [],
    "urls_on_command_lines": [],
    "ports": [],
    "pages": [],
    "websockets": [],
    "pipes_opened": [],
    "profiles_listed": [],
    "attempts": 0,
}
held: list[socket.socket] = []
pids_seen: set[int] = set()
users: set[int] = set()
urls: set[str] = set()
tokens: set[str] = {""}
ports: set[int] = set()


def chromium_command_lines() -> None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                raw = handle.read().decode(errors="replace")
            if "chromium" not in raw:
                continue
            if int(entry) not in pids_seen:
                pids_seen.add(int(entry))
                users.add(os.stat(f"/proc/{entry}").st_uid)
        except OSError:
            continue
        args = raw.split("\x00")
        for url in URL.findall(raw):
            urls.add(url)
        tokens.update(TOKEN.findall(raw))
        try_pipe(int(entry))
        for arg in args:
            if arg.startswith("--user-data-dir="):
                try_profile(arg.split("=", 1)[1])


def try_pipe(pid: int) -> None:
    for fd, mode in ((3, os.O_WRONLY), (4, os.O_RDONLY)):
        try:
            opened = os.open(f"/proc/{pid}/fd/{fd}", mode | os.O_NONBLOCK)
        except OSError:
            continue
        os.close(opened)
        if (pid, fd) not in seen["pipes_opened"]:  # type: ignore[operator]
            seen["pipes_opened"].append((pid, fd))  # type: ignore[attr-defined]


def try_profile(path: str) -> None:
    try:
        names = os.listdir(path)
    except OSError:
        return
    if path not in seen["profiles_listed"]:  # type: ignore[operator]
        seen["profiles_listed"].append(path)  # type: ignore[attr-defined]
    del names


def listening_ports() -> None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def websocket(port: int, path: str) -> bool:
    """Open a WebSocket (and keep it) if the server takes it."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return False
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    try:
        sock.sendall(request.encode())
        status = sock.recv(4096).split(b"\r\n", 1)[0]
    except OSError:
        sock.close()
        return False
    if b" 101 " in status + b" ":
        held.append(sock)
        return True
    sock.close()
    return False


def attack(port: int) -> None:
    for token in sorted(tokens):
        seen["attempts"] = int(seen["attempts"]) + 1  # type: ignore[call-overload]
        status, body = get(port, f"/engine?t={token}")
        if status == 200:
            seen["pages"].append(f"/engine?t={token}")  # type: ignore[attr-defined]
            tokens.update(SESSION.findall(body))
        for path in ("/control", "/peer/1", "/peer/2"):
            if websocket(port, f"{path}?t={token}"):
                seen["websockets"].append(f"{path}?t={token}")  # type: ignore[attr-defined]


def stdin_closed() -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], 0)
    return bool(ready) and not os.read(sys.stdin.fileno(), 1)


def main() -> None:
    chromium_command_lines()
    listening_ports()
    print("ready", flush=True)
    deadline = time.monotonic() + 120
    last_attack = 0.0
    while time.monotonic() < deadline and not stdin_closed():
        chromium_command_lines()
        if urls or time.monotonic() - last_attack > 0.2:
            listening_ports()
            for url in sorted(urls):
                match = re.match(r"https?://127\.0\.0\.1:(\d+)", url)
                if match:
                    ports.add(int(match.group(1)))
            for port in sorted(ports):
                attack(port)
            last_attack = time.monotonic()
        time.sleep(0.002)
    seen["chromium_processes"] = len(pids_seen)
    seen["chromium_users"] = sorted(users)
    seen["urls_on_command_lines"] = sorted(urls)
    seen["ports"] = sorted(ports)
    seen["tokens_seen"] = len(tokens - {""})
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
