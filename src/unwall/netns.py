"""Network namespaces joined to this host by a veth pair, addressed from TEST-NET.

Chromium gathers no loopback ICE candidates, so a browser that takes part in a test runs in
a namespace of its own with a veth address (198.51.100.0/24 by default); the other roles
listen on the host side of the pair. Nothing is routed to the real uplink: the host does
not forward (we check, and refuse to run if it does), and the namespace's resolver points
at its own loopback, where nothing answers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NETNS_ETC = Path("/etc/netns")


class NamespaceError(Exception):
    pass


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NamespaceError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")


def namespaces_possible() -> str | None:
    """None if we can make namespaces here, else the reason we cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    return None


def forwarding_enabled() -> bool:
    for path in ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"):
        with contextlib.suppress(OSError), open(path) as handle:
            if handle.read().strip() != "0":
                return True
    return False


@dataclass
class VethNamespace:
    """A namespace NAME with `ns_ip` on its side of a veth pair and `host_ip` on ours."""

    name: str
    host_ip: str = "198.51.100.1"
    ns_ip: str = "198.51.100.2"
    prefix: int = 30

    @property
    def host_if(self) -> str:
        return f"{self.name[:11]}-h"

    @property
    def ns_if(self) -> str:
        return f"{self.name[:11]}-n"

    def create(self) -> None:
        reason = namespaces_possible()
        if reason is not None:
            raise NamespaceError(reason)
        if forwarding_enabled():
            raise NamespaceError(
                "this host forwards IP packets; a test namespace could reach the uplink"
            )
        self.delete()  # left over from a run that crashed
        try:
            _run("ip", "netns", "add", self.name)
            _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _run("ip", "link", "set", self.ns_if, "netns", self.name)
            _run("ip", "addr", "add", f"{self.host_ip}/{self.prefix}", "dev", self.host_if)
            _run("ip", "link", "set", self.host_if, "up")
            inside = ("ip", "netns", "exec", self.name)
            _run(*inside, "ip", "addr", "add", f"{self.ns_ip}/{self.prefix}", "dev", self.ns_if)
            _run(*inside, "ip", "link", "set", self.ns_if, "up")
            _run(*inside, "ip", "link", "set", "lo", "up")
            # Browsers pick their host candidate from the default route's interface.
            _run(*inside, "ip", "route", "add", "default", "via", self.host_ip)
            etc = NETNS_ETC / self.name
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        except BaseException:
            self.delete()
            raise

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)
        shutil.rmtree(NETNS_ETC / self.name, ignore_errors=True)

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def __enter__(self) -> VethNamespace:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()
