"""`unwall client` on the lab's censored host, as the tests and `bench --path` run it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from unwall.lab import topology

SOCKS = "127.0.0.1:1080"
HTTP = "127.0.0.1:8118"


class CensoredClient:
    """One client process in the censored namespace, its log in a file of its own.

    `info` is what `lab up` returned; `bridge` names its bridge line ("bridge_line_fronted":
    through the lab's CDN, with TLS); `stun` adds the lab's STUN server; `extra` goes on
    the command line as it is, `env` (secrets such as UNWALL_TURN_PASSWORD) in its
    environment. The lab CA is trusted for TLS (it signs turn.test)."""

    def __init__(
        self,
        info: dict[str, Any],
        log: Path,
        *extra: str,
        stun: bool = True,
        paths: int = 1,
        env: dict[str, str] | None = None,
        bridge: str = "bridge_line",
    ) -> None:
        argv = [
            sys.executable, "-m", "unwall", "client", "--bridge", info[bridge],
            "--host-address", topology.CENSORED_IP, "--socks", SOCKS, "--http", HTTP,
            "--paths", str(paths), *(["--ice-server", info["stun"]] if stun else []), *extra,
        ]  # fmt: skip
        self.log = log
        self.started = time.monotonic()
        environment = {**os.environ, "SSL_CERT_FILE": info["lab_ca"], **(env or {})}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", topology.CENSORED, *argv],
                stdout=out,
                stderr=out,
                env=environment,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def until(self, text: str, timeout: float) -> float | None:
        """Seconds from the client's start until `text` is in its log; None if it exits
        or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while text not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)
        return time.monotonic() - self.started

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
