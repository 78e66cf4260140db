"""The box's log: one row per flow, what it learned about it, and a summary per host.

This is the log of "hundreds or thousands of computers" that the box hands to the
authorities; `unwall lab report` reads it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS flows (
    id INTEGER PRIMARY KEY,
    protocol TEXT NOT NULL,
    client TEXT NOT NULL,
    client_port INTEGER NOT NULL,
    server TEXT NOT NULL,
    server_port INTEGER NOT NULL,
    start REAL NOT NULL,
    end REAL,
    packets_out INTEGER DEFAULT 0,
    bytes_out INTEGER DEFAULT 0,
    packets_in INTEGER DEFAULT 0,
    bytes_in INTEGER DEFAULT 0,
    verdict TEXT,
    reason TEXT,
    findings TEXT DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS flows_tuple
    ON flows (protocol, client, client_port, server, server_port);
CREATE TABLE IF NOT EXISTS dns (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    client TEXT NOT NULL,
    name TEXT NOT NULL,
    answer TEXT,
    poisoned INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY,
    scenario TEXT NOT NULL,
    path TEXT NOT NULL,
    ttfb_s REAL,
    MBps REAL,
    ok INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class FlowRow:
    protocol: str
    client: str
    client_port: int
    server: str
    server_port: int


class FlowLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, timeout=10)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _open_flow(self, row: FlowRow) -> int | None:
        found = self.db.execute(
            "SELECT id FROM flows WHERE protocol=? AND client=? AND client_port=? AND server=? "
            "AND server_port=? AND end IS NULL ORDER BY id DESC LIMIT 1",
            (row.protocol, row.client, row.client_port, row.server, row.server_port),
        ).fetchone()
        return int(found[0]) if found else None

    def flow_seen(self, row: FlowRow, start: float) -> int:
        """The open row for this 5-tuple, created if new."""
        flow_id = self._open_flow(row)
        if flow_id is not None:
            return flow_id
        cursor = self.db.execute(
            "INSERT INTO flows (protocol, client, client_port, server, server_port, start) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (row.protocol, row.client, row.client_port, row.server, row.server_port, start),
        )
        return int(cursor.lastrowid or 0)

    def add_findings(self, flow_id: int, findings: list[tuple[str, str, str]]) -> None:
        if not findings:
            return
        (current,) = self.db.execute("SELECT findings FROM flows WHERE id=?", (flow_id,)).fetchone()
        merged = json.loads(current) + [list(f) for f in findings]
        self.db.execute("UPDATE flows SET findings=? WHERE id=?", (json.dumps(merged), flow_id))

    def set_verdict(self, flow_id: int, verdict: str, reason: str) -> None:
        self.db.execute(
            "UPDATE flows SET verdict=?, reason=? WHERE id=?", (verdict, reason, flow_id)
        )

    def flow_ended(
        self, row: FlowRow, start: float | None, end: float, counters: tuple[int, int, int, int]
    ) -> None:
        flow_id = self._open_flow(row)
        if flow_id is None:
            flow_id = self.flow_seen(row, start if start is not None else end)
        self.db.execute(
            "UPDATE flows SET end=?, packets_out=?, bytes_out=?, packets_in=?, bytes_in=? "
            "WHERE id=?",
            (end, *counters, flow_id),
        )

    def dns(self, time: float, client: str, name: str, answer: str, poisoned: bool) -> None:
        self.db.execute(
            "INSERT INTO dns (time, client, name, answer, poisoned) VALUES (?, ?, ?, ?, ?)",
            (time, client, name, answer, int(poisoned)),
        )

    def measurement(
        self, scenario: str, path: str, ttfb_s: float | None, mbps: float | None, ok: bool
    ) -> None:
        self.db.execute(
            "INSERT INTO measurements (scenario, path, ttfb_s, MBps, ok) VALUES (?, ?, ?, ?, ?)",
            (scenario, path, ttfb_s, mbps, int(ok)),
        )


def report(
    path: Path, blocked_names: tuple[str, ...], blocked_addresses: set[str]
) -> dict[str, Any]:
    """Per censored host: the destinations (names and addresses) the box saw, marked blocked."""
    db = sqlite3.connect(path)
    hosts: dict[str, dict[str, Any]] = {}

    def host(client: str) -> dict[str, Any]:
        return hosts.setdefault(
            client,
            {"flows": 0, "bytes": 0, "names": {}, "addresses": {}, "circumvention_suspected": {}},
        )

    for client, server, port, bytes_out, bytes_in, verdict, findings in db.execute(
        "SELECT client, server, server_port, bytes_out, bytes_in, verdict, findings FROM flows"
    ):
        entry = host(client)
        entry["flows"] += 1
        entry["bytes"] += (bytes_out or 0) + (bytes_in or 0)
        address = entry["addresses"].setdefault(
            server,
            {"flows": 0, "ports": [], "blocked_destination": server in blocked_addresses,
             "verdicts": [], "protocols": []},
        )  # fmt: skip
        address["flows"] += 1
        if port not in address["ports"]:
            address["ports"].append(port)
        if verdict and verdict not in address["verdicts"]:
            address["verdicts"].append(verdict)
        for analyzer, key, value in json.loads(findings or "[]"):
            if analyzer not in address["protocols"]:
                address["protocols"].append(analyzer)
            if key in ("sni", "host", "query") and value:
                _name(entry, value, f"{analyzer} {key}", blocked_names)
            if analyzer == "box" and key == "suspected":
                _suspect(entry, server, value)
    for client, name, poisoned in db.execute("SELECT client, name, poisoned FROM dns"):
        record = _name(host(client), name, "dns query", blocked_names)
        if poisoned:
            record["poisoned"] = True
    measurements = [
        {"scenario": s, "path": p, "ttfb_s": t, "MBps": m, "ok": bool(ok)}
        for s, p, t, m, ok in db.execute(
            "SELECT scenario, path, ttfb_s, MBps, ok FROM measurements ORDER BY id"
        )
    ]
    db.close()
    return {"hosts": hosts, "measurements": measurements}


#: what the box suspects, by the first word of its reason
SUSPICIONS = {
    "webrtc": "WebRTC that does not look like a browser's",
    "fet": "fully encrypted traffic (none of the GFW's five exemptions holds)",
    "carrier": "WebRTC that carries a data channel and no media: not a call",
    "hosts": "WebRTC handshakes that repeat one another: not a browser's, which vary",
    "stun": "a NAT-behaviour check (RFC 5780 CHANGE-REQUEST), which no browser makes",
}


def _suspect(entry: dict[str, Any], server: str, reason: str) -> None:
    """Per host: circumvention suspected, what, and from which evidence (and peers)."""
    what = SUSPICIONS.get(reason.split(" ", 1)[0], reason)
    record = entry["circumvention_suspected"].setdefault(what, {"evidence": [], "peers": []})
    if reason not in record["evidence"]:
        record["evidence"].append(reason)
    if server not in record["peers"]:
        record["peers"].append(server)


def _name(
    entry: dict[str, Any], name: str, seen_as: str, blocked_names: tuple[str, ...]
) -> dict[str, Any]:
    from unwall.lab.profile import name_matches

    name = name.lower().rstrip(".")
    record: dict[str, Any] = entry["names"].setdefault(
        name, {"seen_as": [], "blocked_destination": name_matches(name, blocked_names) is not None}
    )
    if seen_as not in record["seen_as"]:
        record["seen_as"].append(seen_as)
    return record
