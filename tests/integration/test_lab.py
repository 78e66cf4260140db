"""The lab: the monitoring box blocks and logs; unwall gets through and leaves no trace.

Each scenario builds the lab (three network namespaces, the box's netfilter rules and
inspector, the internet's DNS, sites, broker, egress and a volunteer) with one censor
profile, then runs curl in the censored namespace, directly and through `unwall client`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from unwall.lab import manager, topology
from unwall.lab.capture import frames
from unwall.lab.flowlog import FlowLog
from unwall.lab.internet import blob
from unwall.lab.profile import SHIPPED_PROFILES

_reason = topology.lab_possible()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

ALL = {
    "dns": {"poison": ["news.test"]},
    "ip": {"block": ["203.0.113.80/32"]},
    "sni": {"block": ["news.test"], "action": "rst"},
    "host": {"block": ["news.test"], "action": "rst"},
}
TECHNIQUES = {
    "dns-poison": {"dns": ALL["dns"]},
    "ip-block": {"ip": ALL["ip"]},
    "sni-rst": {"sni": ALL["sni"]},
    "host-block": {"host": ALL["host"]},
    "all": ALL,
}
NEWS_IP = "203.0.113.80"


def _toml(profile: dict[str, dict[str, object]]) -> str:
    lines = []
    for table, values in profile.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@dataclass
class Lab:
    state: Path
    info: dict[str, str]
    client: subprocess.Popen[bytes] | None = None

    def curl(self, *args: str, timeout: int = 15) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", topology.CENSORED, "curl", "--silent", "--show-error",
             "--max-time", str(timeout), "--cacert", self.info["lab_ca"], *args],
            capture_output=True, text=True, timeout=timeout + 10,
        )  # fmt: skip

    def measure(self, scenario: str, path: str, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.curl("--write-out", "\n%{time_starttransfer} %{speed_download}", *args)
        ok = result.returncode == 0
        ttfb = speed = None
        if ok:
            ttfb_text, speed_text = result.stdout.rsplit("\n", 1)[1].split()
            ttfb, speed = float(ttfb_text), float(speed_text) / 1e6
        log = FlowLog(self.state / "flows.db")
        log.measurement(scenario, path, ttfb, speed, ok)
        log.close()
        return result

    def start_client(self, *extra: str, bridge: str = "bridge_line", wait: bool = True) -> None:
        argv = [sys.executable, "-m", "unwall", "client", "--bridge", self.info[bridge],
                "--host-address", topology.CENSORED_IP, "--socks", "127.0.0.1:1080",
                "--http", "127.0.0.1:8118", *extra]  # fmt: skip
        if self.info.get("stun"):
            argv += ["--ice-server", self.info["stun"]]
        log = (self.state / "client.log").open("wb")
        self.client = subprocess.Popen(
            ["ip", "netns", "exec", topology.CENSORED, *argv], stdout=log, stderr=log
        )
        if not wait:
            return
        self.wait_client_log("tunnel ready")

    def wait_client_log(self, text: str, timeout: float = 60) -> None:
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while text not in (self.state / "client.log").read_text():
            assert self.client.poll() is None, (self.state / "client.log").read_text()
            assert time.monotonic() < deadline, (self.state / "client.log").read_text()
            time.sleep(0.1)

    def socks(self) -> tuple[str, ...]:
        return ("--socks5-hostname", "127.0.0.1:1080")

    def box_log(self) -> str:
        """Everything the box wrote down, as text: flows with findings, and DNS."""
        import sqlite3

        db = sqlite3.connect(self.state / "flows.db")
        rows = (
            db.execute("SELECT * FROM flows").fetchall()
            + db.execute("SELECT * FROM dns").fetchall()
        )
        db.close()
        return "\n".join(repr(row) for row in rows)

    def stop(self) -> None:
        if self.client is not None and self.client.poll() is None:
            self.client.send_signal(signal.SIGTERM)
            try:
                self.client.wait(10)
            except subprocess.TimeoutExpired:
                self.client.kill()
                self.client.wait()


@pytest.fixture
def lab_state(tmp_path: Path) -> Iterator[Path]:
    os.environ["UNWALL_LAB_STATE"] = str(tmp_path / "lab")
    yield tmp_path / "lab"
    manager.down(quiet=True)
    os.environ.pop("UNWALL_LAB_STATE", None)


def topology_exec(namespace: str) -> list[str]:
    return ["ip", "netns", "exec", namespace]


def _up(state: Path, profile: dict[str, dict[str, object]]) -> Lab:
    path = state.parent / "profile.toml"
    path.write_text(_toml(profile))
    info = manager.up(path)
    return Lab(state, info)


def test_allowed_site_works_directly(lab_state: Path) -> None:
    lab = _up(lab_state, ALL)
    for url in ("http://open.test/", "https://open.test/"):
        result = lab.measure("control-allowed", "direct", url)
        assert result.returncode == 0, result.stderr
        assert "<h1>open.test</h1>" in result.stdout


@pytest.mark.parametrize("technique", ["dns-poison", "ip-block", "sni-rst", "host-block"])
def test_blocked_site_fails_directly(lab_state: Path, technique: str) -> None:
    lab = _up(lab_state, TECHNIQUES[technique])
    # Each technique is shown on its own: the other ways to the site stay open.
    if technique == "dns-poison":
        result = lab.measure(technique, "direct", "http://news.test/")
        poisoned = lab.curl("--resolve", f"news.test:80:{NEWS_IP}", "http://news.test/")
        assert poisoned.returncode == 0, "with the right address the site works"
    elif technique == "ip-block":
        result = lab.measure(technique, "direct", "--resolve", f"news.test:80:{NEWS_IP}",
                             "--connect-timeout", "3", "http://news.test/")  # fmt: skip
    elif technique == "sni-rst":
        result = lab.measure(technique, "direct", "--resolve", f"news.test:443:{NEWS_IP}",
                             "https://news.test/")  # fmt: skip
        assert "reset" in result.stderr.lower() or result.returncode == 35, result.stderr
        plain = lab.curl("--resolve", f"news.test:80:{NEWS_IP}", "http://news.test/")
        assert plain.returncode == 0, "plain HTTP is not judged by SNI"
    else:
        result = lab.measure(technique, "direct", "--resolve", f"news.test:80:{NEWS_IP}",
                             "http://news.test/")  # fmt: skip
        assert "reset" in result.stderr.lower() or result.returncode == 56, result.stderr
    assert result.returncode != 0, f"{technique}: the blocked site loaded directly"
    assert "<h1>news.test</h1>" not in result.stdout


@pytest.mark.parametrize("technique", list(TECHNIQUES))
def test_blocked_site_loads_through_unwall(lab_state: Path, technique: str) -> None:
    lab = _up(lab_state, TECHNIQUES[technique])
    try:
        lab.start_client()
        for url in ("http://news.test/", "https://news.test/"):
            result = lab.measure(technique, "unwall", *lab.socks(), url)
            assert result.returncode == 0, result.stderr
            assert "<h1>news.test</h1>" in result.stdout
        # Byte-exact, and with a throughput figure for the report.
        size = 5_000_000
        blob = lab.measure(
            technique, "unwall", *lab.socks(), "--output", str(lab_state / "blob"),
            f"http://news.test/blob/{size}",
        )  # fmt: skip
        assert blob.returncode == 0, blob.stderr
        from unwall.lab.internet import blob as expected

        assert (lab_state / "blob").read_bytes() == expected(size)
    finally:
        lab.stop()
    report = json.loads(manager.report(as_json=True))
    assert any(m["path"] == "unwall" and m["ok"] for m in report["measurements"])


def test_privacy_audit(lab_state: Path) -> None:
    """The box learns nothing of where an unwall user goes; a direct fetch it does see."""
    lab = _up(lab_state, ALL)
    hidden = f"c{secrets.token_hex(6)}.canary.test"
    seen = f"c{secrets.token_hex(6)}.canary.test"
    canary_ip = "203.0.113.82"
    pcap = lab_state / "box.pcap"
    argv = [sys.executable, "-m", "unwall.lab.capture", str(pcap), "b0", "b1"]
    capture = subprocess.Popen([*topology_exec(topology.BOX), *argv])
    try:
        deadline = time.monotonic() + 10
        while not Path(str(pcap) + ".ready").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lab.start_client()
        bridged = lab.curl(*lab.socks(), f"http://{hidden}/")
        assert bridged.returncode == 0, bridged.stderr
        assert f"<h1>{hidden}</h1>" in bridged.stdout
        direct = lab.curl(f"http://{seen}/")
        assert direct.returncode == 0, direct.stderr
        time.sleep(1.0)
    finally:
        lab.stop()
        capture.send_signal(signal.SIGTERM)
        capture.wait(10)
    log = lab.box_log()
    captured = b"".join(frames(pcap))
    # Positive control: the direct fetch is in the log and in the capture.
    assert seen in log
    assert seen.encode() in captured
    assert bytes(int(part) for part in canary_ip.split(".")) in captured
    # The bridged one is in neither. (Its IP could only appear in the capture by chance
    # inside ciphertext, but the direct fetch used the same IP: so check the log for it,
    # and the capture for the name.)
    assert hidden not in log
    assert hidden.encode() not in captured
    flows_to_canary = [line for line in log.splitlines() if f"'{canary_ip}'" in line]
    assert len(flows_to_canary) == 1, flows_to_canary  # only the direct fetch


def test_box_fails_closed(lab_state: Path) -> None:
    lab = _up(lab_state, ALL)
    assert lab.curl("http://open.test/").returncode == 0
    pids = json.loads((lab_state / "pids.json").read_text())
    os.killpg(pids["box"], signal.SIGKILL)
    time.sleep(0.5)
    after = lab.curl("--connect-timeout", "3", "http://open.test/", timeout=6)
    assert after.returncode != 0, "with its inspector dead the box must not let traffic pass"


def test_report_shows_what_the_box_saw(lab_state: Path) -> None:
    lab = _up(lab_state, ALL)
    lab.curl("http://news.test/")
    lab.curl("http://open.test/")
    report = json.loads(manager.report(as_json=True))
    host = report["hosts"][topology.CENSORED_IP]
    assert host["names"]["news.test"]["blocked_destination"] is True
    assert host["names"]["news.test"].get("poisoned") is True
    assert host["names"]["open.test"]["blocked_destination"] is False
    text = manager.report()
    assert "news.test" in text and "BLOCKED DESTINATION" in text


def test_rendezvous_through_a_front(lab_state: Path) -> None:
    """The broker's address and name are blocked; the client reaches it through the CDN."""
    profile = {
        "dns": {"poison": ["broker.test", "news.test"]},
        "ip": {"block": ["203.0.113.20/32", NEWS_IP + "/32"]},
        "sni": {"block": ["broker.test", "news.test"]},
        "host": {"block": ["broker.test", "news.test"]},
    }
    lab = _up(lab_state, profile)
    # Directly, the broker cannot be reached: the client says so and keeps trying.
    lab.start_client("--stream-wait", "2", wait=False)
    lab.wait_client_log("cannot reach the broker", timeout=60)
    lab.stop()
    # Fronted: DNS, TCP and TLS name cdn.test; only the Host header inside TLS names the broker.
    # A second front, which the box blocks (news.test's name is poisoned, its SNI reset): the
    # client, trying the two in a random order, passes over it when it comes first.
    lab.start_client(
        "--ca-file", lab.info["lab_ca"], "--front", "https://news.test/", "--front",
        "https://cdn.test/", bridge="bridge_line_fronted",
    )  # fmt: skip
    result = lab.measure("fronted-rendezvous", "unwall", *lab.socks(), "https://news.test/")
    lab.stop()
    assert result.returncode == 0, result.stderr
    assert "<h1>news.test</h1>" in result.stdout
    report = json.loads(manager.report(as_json=True))
    names = report["hosts"][topology.CENSORED_IP]["names"]
    assert "cdn.test" in names
    assert "tls sni" in names["cdn.test"]["seen_as"]


def test_throttled_site_is_slow_directly_and_fast_through_unwall(lab_state: Path) -> None:
    lab = _up(lab_state, {"throttle": {"ip": ["203.0.113.81/32"], "rate": "800kbit"}})
    size = 1_000_000
    try:
        direct = lab.measure(
            "throttle", "direct", "-o", "/dev/null", f"http://open.test/blob/{size}"
        )
        assert direct.returncode == 0, direct.stderr
        direct_speed = float(direct.stdout.split()[-1])
        lab.start_client()
        bridged = lab.measure(
            "throttle", "unwall", *lab.socks(), "-o", "/dev/null", f"http://open.test/blob/{size}"
        )
        assert bridged.returncode == 0, bridged.stderr
        bridged_speed = float(bridged.stdout.split()[-1])
    finally:
        lab.stop()
    assert direct_speed < 150_000, f"800 kbit/s is 100 kB/s; got {direct_speed:.0f} B/s"
    assert bridged_speed > 3 * direct_speed


def test_residual_block_after_a_hit(lab_state: Path) -> None:
    """After a Host hit, the same client, server and port stay blocked for a while,
    whatever the next request asks for; other ports of that server still work."""
    lab = _up(lab_state, {"host": ALL["host"], "residual": {"seconds": 4}})
    hit = lab.curl("--resolve", f"news.test:80:{NEWS_IP}", "http://news.test/")
    assert hit.returncode != 0
    time.sleep(0.3)
    # An innocent request to the same address and port is dropped during the residual...
    innocent = lab.curl(
        "--connect-timeout", "2", "--resolve", f"x.test:80:{NEWS_IP}", "http://x.test/", timeout=4
    )
    assert innocent.returncode != 0
    # ... but the same server on another port is fine, and so is the port after it ends.
    other_port = lab.curl("--resolve", f"x.test:443:{NEWS_IP}", "-k", "https://x.test/")
    assert other_port.returncode == 0, other_port.stderr
    time.sleep(4.5)
    later = lab.curl("--resolve", f"x.test:80:{NEWS_IP}", "http://x.test/")
    assert later.returncode == 0, later.stderr


def _suspicions(host: dict[str, object]) -> list[str]:
    suspected = host.get("circumvention_suspected") or {}
    assert isinstance(suspected, dict)
    return [reason for record in suspected.values() for reason in record["evidence"]]


def test_a_browsers_only_box_lets_the_unwall_client_through(lab_state: Path) -> None:
    """WebRTC allowed only when it looks like a browser, in `drop` mode: the tunnel works
    and the report says nothing of the censored host. The handshake is DTLS 1.3 shaped as
    Chromium's, the ICE checks and SRTP profiles are Chromium's (docs/fingerprints.md)."""
    lab = _up(lab_state, {"webrtc": {"allow": "browsers"}})
    try:
        lab.start_client()
        result = lab.curl(*lab.socks(), "http://open.test/")
        assert result.returncode == 0, result.stderr
    finally:
        lab.stop()
    report = json.loads(manager.report(as_json=True))
    assert _suspicions(report["hosts"].get(topology.CENSORED_IP, {})) == []
    assert "is not a browser's" not in lab.box_log()
    assert "CIRCUMVENTION SUSPECTED" not in manager.report()


def test_a_box_that_knows_stun_flags_the_clients_nat_check(lab_state: Path) -> None:
    """`[stun] change_request`: the client's NAT check as it was (`--nat-check rfc5780`:
    CHANGE-REQUEST to the operator's STUN server, before its first offer) names the host,
    whatever its WebRTC looks like; the tunnel still works (flag mode). Its default check
    (plain bindings to the server's two addresses, as a browser with two STUN servers
    sends) is not named."""
    lab = _up(lab_state, {"stun": {"change_request": True, "action": "flag"}})
    stun_evidence = []
    for mode in ("browser", "rfc5780"):
        try:
            lab.start_client("--nat-check", mode)
            result = lab.curl(*lab.socks(), "http://open.test/")
            assert result.returncode == 0, result.stderr
        finally:
            lab.stop()
        report = json.loads(manager.report(as_json=True))
        evidence = _suspicions(report["hosts"].get(topology.CENSORED_IP, {}))
        stun_evidence.append([e for e in evidence if e.startswith("stun ")])
    assert stun_evidence[0] == [], stun_evidence
    assert any(e.startswith("stun change-request (ip+port)") for e in stun_evidence[1])


def test_the_rendezvous_a_box_can_neither_read_single_out_nor_cut(lab_state: Path) -> None:
    """The shipped rendezvous-blocked profile: the broker blocked by name and address, the
    line's first front (news.test) by name and SNI, `[tls]`, `[stun]` and browsers-only
    WebRTC. The client, with a two-front line, reaches the broker through the second front
    with a ClientHello the box takes for Chromium's (curl_cffi), its offers sealed, its NAT
    check a browser's; the download is byte-exact and the report has nothing on the host.
    The same client with what it used before (Python's TLS: no ALPN, 18 suites; RFC 5780's
    CHANGE-REQUEST) is named by both rules: the rules do something."""
    lab = _up(lab_state, tomllib.loads((SHIPPED_PROFILES / "rendezvous-blocked.toml").read_text()))
    fronts = ("--front", "https://news.test/", "--front", "https://cdn.test/")
    want = hashlib.sha256(blob(1_000_000)).hexdigest()
    evidence = []
    for before in (False, True):
        old_ways = ("--broker-http", "python", "--nat-check", "rfc5780") if before else ()
        try:
            lab.start_client(
                "--ca-file", lab.info["lab_ca"], *fronts, *old_ways, bridge="bridge_line_fronted"
            )
            got = subprocess.run(
                ["ip", "netns", "exec", topology.CENSORED, "curl", "--silent", "--show-error",
                 "--max-time", "60", *lab.socks(), "http://open.test/blob/1000000"],
                capture_output=True, timeout=70,
            )  # fmt: skip
            assert got.returncode == 0, got.stderr
            assert hashlib.sha256(got.stdout).hexdigest() == want
        finally:
            lab.stop()
        report = json.loads(manager.report(as_json=True))
        evidence.append(_suspicions(report["hosts"].get(topology.CENSORED_IP, {})))
    assert evidence[0] == [], evidence
    assert any(
        e.startswith("tls ja4 t13d181100_") and e.endswith(" to cdn.test: not a browser's")
        for e in evidence[1]
    ), evidence
    assert any(e.startswith("stun change-request") for e in evidence[1]), evidence


RANDOM_FIRST_PAYLOAD = """
import socket, sys
s = socket.create_connection(("203.0.113.81", 80), timeout=5)  # open.test
s.sendall(bytes(b | 0x80 if 0x20 <= b <= 0x7E else b for b in __import__("os").urandom(600)))
try:
    s.recv(100)
    print("answered")
except TimeoutError:
    print("silence")
"""


def test_the_fully_encrypted_traffic_rule(lab_state: Path) -> None:
    """The GFW's FET rule on every TCP flow: a connection whose first bytes look random is
    dropped (the positive control), while unwall's TCP channels through the box are exempt:
    the broker over plain HTTP (ex2: printable first bytes, as HTTP is) and over the TLS
    front (ex5: a TLS record). The WebRTC hop is UDP, which the rule does not judge."""
    lab = _up(lab_state, {"fet": {"block": True}})
    probe = subprocess.run(
        [*topology_exec(topology.CENSORED), sys.executable, "-c", RANDOM_FIRST_PAYLOAD],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert probe.stdout.strip() == "silence", probe.stdout + probe.stderr
    assert "fet first payload fully encrypted" in lab.box_log()
    try:
        lab.start_client()
        result = lab.curl(*lab.socks(), "http://open.test/")
        assert result.returncode == 0, result.stderr
        lab.stop()
        lab.start_client("--ca-file", lab.info["lab_ca"], bridge="bridge_line_fronted")
        result = lab.curl(*lab.socks(), "https://news.test/")
        assert result.returncode == 0, result.stderr
    finally:
        lab.stop()
    report = json.loads(manager.report(as_json=True))
    evidence = _suspicions(report["hosts"][topology.CENSORED_IP])
    assert len([reason for reason in evidence if reason.startswith("fet ")]) == 1, evidence
