"""The lab's networks: three namespaces joined by veth pairs, addressed from TEST-NET.

```
 censored (198.51.100.10) ── c0 ═ b0 ── box ── b1 ═ i0 ── internet (203.0.113.0/24)
                              198.51.100.1      203.0.113.1     .254 and service addresses
```

The box routes between the two and NATs the censored network (MASQUERADE on b1), as a
company gateway does. Forwarding is switched on inside the box namespace only; nothing is
joined to the host's own network or its uplink.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "uwlab-"
CENSORED = PREFIX + "censored"
BOX = PREFIX + "box"
INTERNET = PREFIX + "internet"
NAMESPACES = (CENSORED, BOX, INTERNET)

CENSORED_IP = "198.51.100.10"
BOX_INSIDE_IP = "198.51.100.1"
BOX_OUTSIDE_IP = "203.0.113.1"
INTERNET_IP = "203.0.113.254"
CENSORED_NET = "198.51.100.0/24"
INTERNET_NET = "203.0.113.0/24"

NETNS_ETC = Path("/etc/netns")


class LabError(Exception):
    pass


@dataclass(frozen=True)
class Service:
    """A name in the lab's DNS zone and the internet address that serves it."""

    name: str
    address: str


@dataclass
class LabAddresses:
    dns: str = "203.0.113.53"
    stun: str = "203.0.113.3"
    broker: str = "203.0.113.20"
    egress: str = "203.0.113.21"
    volunteers: str = "203.0.113.22"
    front: str = "203.0.113.30"
    news: str = "203.0.113.80"  # the blocked news site
    open: str = "203.0.113.81"  # the allowed control site
    canary: str = "203.0.113.82"  # *.canary.test: names used once, for the privacy audit
    zone: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.zone = {
            "news.test": self.news,
            "open.test": self.open,
            "broker.test": self.broker,
            "egress.test": self.egress,
            "cdn.test": self.front,
            "stun.test": self.stun,
        }

    def all(self) -> list[str]:
        return [
            self.dns,
            self.stun,
            self.broker,
            self.egress,
            self.volunteers,
            self.front,
            self.news,
            self.open,
            self.canary,
        ]


def run(*argv: str, namespace: str | None = None, check: bool = True) -> str:
    if namespace is not None:
        argv = ("ip", "netns", "exec", namespace, *argv)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def lab_possible() -> str | None:
    """None if the lab can be built here, else why not."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces and netfilter): run it with sudo"
    for tool in ("ip", "iptables", "conntrack", "ethtool"):
        if shutil.which(tool) is None:
            return f"the lab needs {tool}; ./bootstrap installs it (apt-get)"
    return None


def namespaces_up() -> list[str]:
    names = run("ip", "netns", "list", check=False).split()
    return [name for name in names if name.startswith(PREFIX)]


def build(addresses: LabAddresses) -> None:
    """Create the namespaces, links, addresses, routes and NAT."""
    reason = lab_possible()
    if reason is not None:
        raise LabError(reason)
    teardown()
    try:
        for name in NAMESPACES:
            run("ip", "netns", "add", name)
            run("ip", "link", "set", "lo", "up", namespace=name)
        _link(CENSORED, "c0", BOX, "b0")
        _link(BOX, "b1", INTERNET, "i0")
        run("ip", "addr", "add", f"{CENSORED_IP}/24", "dev", "c0", namespace=CENSORED)
        run("ip", "route", "add", "default", "via", BOX_INSIDE_IP, namespace=CENSORED)
        run("ip", "addr", "add", f"{BOX_INSIDE_IP}/24", "dev", "b0", namespace=BOX)
        run("ip", "addr", "add", f"{BOX_OUTSIDE_IP}/24", "dev", "b1", namespace=BOX)
        run("ip", "addr", "add", f"{INTERNET_IP}/24", "dev", "i0", namespace=INTERNET)
        for address in addresses.all():
            run("ip", "addr", "add", f"{address}/32", "dev", "i0", namespace=INTERNET)
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", namespace=BOX)
        # Per-flow byte and packet counts, and start/stop times, in conntrack events.
        run("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1", namespace=BOX, check=False)
        run("sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1", namespace=BOX, check=False)
        run(
            "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "b1", "-s", CENSORED_NET,
            "-j", "MASQUERADE", namespace=BOX,
        )  # fmt: skip
        for name in NAMESPACES:
            etc = NETNS_ETC / name
            etc.mkdir(parents=True, exist_ok=True)
            resolver = addresses.dns if name != BOX else "127.0.0.1"
            (etc / "resolv.conf").write_text(f"nameserver {resolver}\n")
            (etc / "hosts").write_text("127.0.0.1 localhost\n")
    except BaseException:
        teardown()
        raise


def real_sized_packets(namespace: str, device: str) -> None:
    """No segmentation or receive offloads on `device`: every packet on it is at most one
    MTU (1500), as on a real path, so the link emulator's loss and rate act per packet and
    the box inspects the packets a wire would carry, not 64 KiB aggregates."""
    run("ethtool", "-K", device, "gso", "off", "tso", "off", "gro", "off", namespace=namespace)


def _link(left: str, left_if: str, right: str, right_if: str) -> None:
    temp_left, temp_right = f"uwl{os.getpid() % 10000}a", f"uwl{os.getpid() % 10000}b"
    run("ip", "link", "add", temp_left, "type", "veth", "peer", "name", temp_right)
    run("ip", "link", "set", temp_left, "netns", left)
    run("ip", "link", "set", temp_right, "netns", right)
    run("ip", "link", "set", temp_left, "name", left_if, namespace=left)
    run("ip", "link", "set", temp_right, "name", right_if, namespace=right)
    run("ip", "link", "set", left_if, "up", namespace=left)
    run("ip", "link", "set", right_if, "up", namespace=right)
    real_sized_packets(left, left_if)
    real_sized_packets(right, right_if)


def pids_in(namespace: str) -> list[int]:
    out = run("ip", "netns", "pids", namespace, check=False)
    return [int(pid) for pid in out.split() if pid.isdigit()]


def teardown() -> None:
    """Remove every lab namespace (and with them their links); idempotent."""
    for name in namespaces_up():
        for pid in pids_in(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)  # processes the lab started in its own namespaces
        run("ip", "netns", "del", name, check=False)
        shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
