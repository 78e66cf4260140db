"""The box's flow log: rows in a real SQLite file, and the per-host report read from it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unwall.lab.flowlog import FlowLog, FlowRow, report

CLIENT = "198.51.100.10"
OTHER_CLIENT = "198.51.100.11"
NEWS = "203.0.113.80"
CDN = "203.0.113.81"
RESOLVER = "203.0.113.254"

TLS_FLOW = FlowRow("tcp", CLIENT, 40000, NEWS, 443)
HTTP_FLOW = FlowRow("tcp", CLIENT, 40001, NEWS, 80)
QUIC_FLOW = FlowRow("udp", CLIENT, 50000, CDN, 443)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "flows.db"


@pytest.fixture
def flowlog(db_path: Path) -> Iterator[FlowLog]:
    log = FlowLog(db_path)
    yield log
    log.close()


def rows(path: Path, query: str, *args: object) -> list[tuple[Any, ...]]:
    """What a separate reader sees (the box writes, `unwall lab report` reads)."""
    db = sqlite3.connect(path)
    try:
        return db.execute(query, args).fetchall()
    finally:
        db.close()


FLOW_COLUMNS = (
    "protocol, client, client_port, server, server_port, start, end, packets_out, bytes_out, "
    "packets_in, bytes_in, verdict, reason, findings"
)


def flow(path: Path, flow_id: int) -> dict[str, Any]:
    (values,) = rows(path, f"SELECT {FLOW_COLUMNS} FROM flows WHERE id=?", flow_id)
    return dict(zip(FLOW_COLUMNS.split(", "), values, strict=True))


# -- flows --------------------------------------------------------------------------------


def test_a_new_flow(flowlog: FlowLog, db_path: Path) -> None:
    flow_id = flowlog.flow_seen(TLS_FLOW, 100.5)
    assert flow(db_path, flow_id) == {
        "protocol": "tcp",
        "client": CLIENT,
        "client_port": 40000,
        "server": NEWS,
        "server_port": 443,
        "start": 100.5,
        "end": None,
        "packets_out": 0,
        "bytes_out": 0,
        "packets_in": 0,
        "bytes_in": 0,
        "verdict": None,
        "reason": None,
        "findings": "[]",
    }


def test_flow_seen_is_idempotent_while_the_flow_is_open(flowlog: FlowLog, db_path: Path) -> None:
    first = flowlog.flow_seen(TLS_FLOW, 100.0)
    assert flowlog.flow_seen(TLS_FLOW, 101.0) == first
    assert flowlog.flow_seen(FlowRow("tcp", CLIENT, 40000, NEWS, 443), 102.0) == first
    assert flow(db_path, first)["start"] == 100.0  # the first sighting's time stays
    assert rows(db_path, "SELECT count(*) FROM flows") == [(1,)]


# (id, a row differing from TLS_FLOW in one field)
OTHER_TUPLES = [
    ("protocol", FlowRow("udp", CLIENT, 40000, NEWS, 443)),
    ("client", FlowRow("tcp", OTHER_CLIENT, 40000, NEWS, 443)),
    ("client-port", FlowRow("tcp", CLIENT, 40001, NEWS, 443)),
    ("server", FlowRow("tcp", CLIENT, 40000, CDN, 443)),
    ("server-port", FlowRow("tcp", CLIENT, 40000, NEWS, 80)),
]


@pytest.mark.parametrize(
    "other", [case[1] for case in OTHER_TUPLES], ids=[case[0] for case in OTHER_TUPLES]
)
def test_each_five_tuple_is_its_own_flow(flowlog: FlowLog, other: FlowRow) -> None:
    assert flowlog.flow_seen(TLS_FLOW, 100.0) != flowlog.flow_seen(other, 100.0)


def test_a_five_tuple_reused_after_its_flow_ended_is_a_new_flow(
    flowlog: FlowLog, db_path: Path
) -> None:
    first = flowlog.flow_seen(TLS_FLOW, 100.0)
    flowlog.flow_ended(TLS_FLOW, 100.0, 110.0, (1, 2, 3, 4))
    second = flowlog.flow_seen(TLS_FLOW, 200.0)
    assert second != first
    assert flow(db_path, first)["end"] == 110.0
    assert (flow(db_path, second)["start"], flow(db_path, second)["end"]) == (200.0, None)


def test_add_findings_merges(flowlog: FlowLog, db_path: Path) -> None:
    flow_id = flowlog.flow_seen(TLS_FLOW, 100.0)
    flowlog.add_findings(flow_id, [])
    assert json.loads(flow(db_path, flow_id)["findings"]) == []
    flowlog.add_findings(flow_id, [("tls", "sni", "news.test"), ("tls", "alpn", "h2")])
    flowlog.add_findings(flow_id, [("tls", "ja3", "abc")])
    flowlog.add_findings(flow_id, [])
    assert json.loads(flow(db_path, flow_id)["findings"]) == [
        ["tls", "sni", "news.test"],
        ["tls", "alpn", "h2"],
        ["tls", "ja3", "abc"],
    ]


def test_add_findings_touches_only_its_flow(flowlog: FlowLog, db_path: Path) -> None:
    tls = flowlog.flow_seen(TLS_FLOW, 100.0)
    http = flowlog.flow_seen(HTTP_FLOW, 100.0)
    flowlog.add_findings(http, [("http", "host", "news.test")])
    assert flow(db_path, tls)["findings"] == "[]"
    assert json.loads(flow(db_path, http)["findings"]) == [["http", "host", "news.test"]]


def test_set_verdict(flowlog: FlowLog, db_path: Path) -> None:
    flow_id = flowlog.flow_seen(TLS_FLOW, 100.0)
    flowlog.set_verdict(flow_id, "rst", "sni news.test matches news.test")
    record = flow(db_path, flow_id)
    assert (record["verdict"], record["reason"]) == ("rst", "sni news.test matches news.test")
    flowlog.set_verdict(flow_id, "drop", "ip 203.0.113.80 in 203.0.113.80/32")
    assert flow(db_path, flow_id)["verdict"] == "drop"


def test_flow_ended_updates_counters_and_end(flowlog: FlowLog, db_path: Path) -> None:
    flow_id = flowlog.flow_seen(TLS_FLOW, 100.0)
    flowlog.add_findings(flow_id, [("tls", "sni", "news.test")])
    flowlog.set_verdict(flow_id, "allow", "nothing to object to")
    flowlog.flow_ended(TLS_FLOW, 97.0, 103.0, (6, 400, 5, 900))
    record = flow(db_path, flow_id)
    assert record["start"] == 100.0  # a seen flow keeps its start
    assert record["end"] == 103.0
    assert (
        record["packets_out"],
        record["bytes_out"],
        record["packets_in"],
        record["bytes_in"],
    ) == (6, 400, 5, 900)
    assert record["verdict"] == "allow"
    assert json.loads(record["findings"]) == [["tls", "sni", "news.test"]]
    assert rows(db_path, "SELECT count(*) FROM flows") == [(1,)]


# (id, the start conntrack gave (None without timestamps), the start logged)
UNSEEN_ENDS = [
    ("with-start", 97.0, 97.0),
    ("without-start", None, 103.0),
]


@pytest.mark.parametrize(
    ("start", "logged_start"),
    [case[1:] for case in UNSEEN_ENDS],
    ids=[case[0] for case in UNSEEN_ENDS],
)
def test_a_flow_ended_without_having_been_seen_is_created(
    flowlog: FlowLog, db_path: Path, start: float | None, logged_start: float
) -> None:
    flowlog.flow_ended(QUIC_FLOW, start, 103.0, (2, 2500, 3, 3000))
    (flow_id,) = rows(db_path, "SELECT id FROM flows")[0]
    record = flow(db_path, flow_id)
    assert (record["protocol"], record["client"], record["server"]) == ("udp", CLIENT, CDN)
    assert (record["start"], record["end"]) == (logged_start, 103.0)
    assert (record["packets_out"], record["bytes_out"]) == (2, 2500)
    assert (record["packets_in"], record["bytes_in"]) == (3, 3000)
    assert record["verdict"] is None


def test_dns_rows(flowlog: FlowLog, db_path: Path) -> None:
    flowlog.dns(100.0, CLIENT, "news.test", "203.0.113.99", True)
    flowlog.dns(101.0, CLIENT, "allowed.test", "allowed.test A 203.0.113.82", False)
    assert rows(db_path, "SELECT time, client, name, answer, poisoned FROM dns ORDER BY id") == [
        (100.0, CLIENT, "news.test", "203.0.113.99", 1),
        (101.0, CLIENT, "allowed.test", "allowed.test A 203.0.113.82", 0),
    ]


def test_measurements(flowlog: FlowLog, db_path: Path) -> None:
    flowlog.measurement("sni-block", "direct", None, None, False)
    flowlog.measurement("sni-block", "unwall", 0.25, 11.5, True)
    assert rows(db_path, "SELECT scenario, path, ttfb_s, MBps, ok FROM measurements") == [
        ("sni-block", "direct", None, None, 0),
        ("sni-block", "unwall", 0.25, 11.5, 1),
    ]


def test_the_log_survives_a_restart(db_path: Path) -> None:
    first = FlowLog(db_path)
    flow_id = first.flow_seen(TLS_FLOW, 100.0)
    first.close()
    second = FlowLog(db_path)  # the schema is created only if missing
    try:
        assert second.flow_seen(TLS_FLOW, 150.0) == flow_id
    finally:
        second.close()


# -- the report ---------------------------------------------------------------------------

BLOCKED_NAMES = ("news.test",)
BLOCKED_ADDRESSES = {NEWS}


def a_day_at_the_box(log: FlowLog) -> None:
    """A censored host asks DNS, is reset on TLS and HTTP to news.test, gets through with
    QUIC to a CDN; another host only resolves a name."""
    log.dns(99.0, CLIENT, "news.test", "203.0.113.99", True)
    log.dns(99.5, CLIENT, "CDN.test.", "cdn.test A 203.0.113.81", False)
    tls = log.flow_seen(TLS_FLOW, 100.0)
    log.add_findings(tls, [("tls", "sni", "www.news.test"), ("tls", "alpn", "h2,http/1.1")])
    log.set_verdict(tls, "rst", "sni www.news.test matches news.test")
    log.flow_ended(TLS_FLOW, 100.0, 100.2, (4, 800, 2, 120))
    http = log.flow_seen(HTTP_FLOW, 101.0)
    log.add_findings(http, [("http", "request", "GET / HTTP/1.1"), ("http", "host", "news.test")])
    log.set_verdict(http, "rst", "host news.test matches news.test")
    quic = log.flow_seen(QUIC_FLOW, 102.0)
    log.add_findings(quic, [("quic", "version", "v1"), ("quic", "sni", "cdn.test")])
    log.set_verdict(quic, "allow", "nothing to object to")
    log.flow_ended(QUIC_FLOW, 102.0, 110.0, (30, 5000, 40, 50000))
    again = log.flow_seen(FlowRow("udp", CLIENT, 50001, CDN, 443), 111.0)
    log.add_findings(again, [("quic", "sni", "cdn.test")])
    log.set_verdict(again, "allow", "nothing to object to")
    dns = log.flow_seen(FlowRow("udp", CLIENT, 53000, RESOLVER, 53), 98.0)
    log.add_findings(dns, [("dns", "query", "news.test"), ("dns", "query-type", "news.test A")])
    log.dns(120.0, OTHER_CLIENT, "forum.news.test", "203.0.113.99", True)
    log.measurement("sni-block", "direct", None, None, False)
    log.measurement("sni-block", "unwall", 0.3, 12.0, True)


def test_report(flowlog: FlowLog, db_path: Path) -> None:
    a_day_at_the_box(flowlog)
    assert report(db_path, BLOCKED_NAMES, BLOCKED_ADDRESSES) == {
        "hosts": {
            CLIENT: {
                "flows": 5,
                "bytes": 800 + 120 + 5000 + 50000,
                "names": {
                    "www.news.test": {"seen_as": ["tls sni"], "blocked_destination": True},
                    "news.test": {
                        "seen_as": ["http host", "dns query"],
                        "blocked_destination": True,
                        "poisoned": True,
                    },
                    "cdn.test": {
                        "seen_as": ["quic sni", "dns query"],
                        "blocked_destination": False,
                    },
                },
                "addresses": {
                    NEWS: {
                        "flows": 2,
                        "ports": [443, 80],
                        "blocked_destination": True,
                        "verdicts": ["rst"],
                        "protocols": ["tls", "http"],
                    },
                    CDN: {
                        "flows": 2,
                        "ports": [443],
                        "blocked_destination": False,
                        "verdicts": ["allow"],
                        "protocols": ["quic"],
                    },
                    RESOLVER: {
                        "flows": 1,
                        "ports": [53],
                        "blocked_destination": False,
                        "verdicts": [],
                        "protocols": ["dns"],
                    },
                },
                "circumvention_suspected": {},
            },
            OTHER_CLIENT: {
                "flows": 0,
                "bytes": 0,
                "names": {
                    "forum.news.test": {
                        "seen_as": ["dns query"],
                        "blocked_destination": True,
                        "poisoned": True,
                    },
                },
                "addresses": {},
                "circumvention_suspected": {},
            },
        },
        "measurements": [
            {"scenario": "sni-block", "path": "direct", "ttfb_s": None, "MBps": None, "ok": False},
            {"scenario": "sni-block", "path": "unwall", "ttfb_s": 0.3, "MBps": 12.0, "ok": True},
        ],
    }


# (id, blocked names, blocked addresses, {name: blocked}, {address: blocked})
BLOCK_LISTS: list[tuple[str, tuple[str, ...], set[str], dict[str, bool], dict[str, bool]]] = [
    (
        "nothing-blocked",
        (),
        set(),
        {"www.news.test": False, "news.test": False, "cdn.test": False},
        {NEWS: False, CDN: False, RESOLVER: False},
    ),
    (
        "cdn-blocked",
        ("cdn.test",),
        {CDN},
        {"www.news.test": False, "news.test": False, "cdn.test": True},
        {NEWS: False, CDN: True, RESOLVER: False},
    ),
    (
        "subdomain-only",
        ("www.news.test",),
        set(),
        {"www.news.test": True, "news.test": False, "cdn.test": False},
        {NEWS: False, CDN: False, RESOLVER: False},
    ),
]


@pytest.mark.parametrize(
    ("names", "addresses", "names_blocked", "addresses_blocked"),
    [case[1:] for case in BLOCK_LISTS],
    ids=[case[0] for case in BLOCK_LISTS],
)
def test_report_marks_blocked_destinations(
    flowlog: FlowLog,
    db_path: Path,
    names: tuple[str, ...],
    addresses: set[str],
    names_blocked: dict[str, bool],
    addresses_blocked: dict[str, bool],
) -> None:
    a_day_at_the_box(flowlog)
    host = report(db_path, names, addresses)["hosts"][CLIENT]
    assert {n: r["blocked_destination"] for n, r in host["names"].items()} == names_blocked
    assert {a: r["blocked_destination"] for a, r in host["addresses"].items()} == (
        addresses_blocked
    )


def test_report_only_names_from_name_findings(flowlog: FlowLog, db_path: Path) -> None:
    """sni, host and query findings name destinations; the others (and empty values) do
    not."""
    flow_id = flowlog.flow_seen(TLS_FLOW, 100.0)
    flowlog.add_findings(
        flow_id,
        [
            ("tls", "no-sni", ""),
            ("tls", "alpn", "h2"),
            ("tls", "ja3", "abc"),
            ("http", "request", "GET http://other.test/ HTTP/1.1"),
            ("dns", "query-type", "other.test A"),
            ("dns", "answer", "other.test A 203.0.113.1"),
            ("stun", "software", "other.test"),
            ("tls", "sni", ""),
        ],
    )
    host = report(db_path, BLOCKED_NAMES, BLOCKED_ADDRESSES)["hosts"][CLIENT]
    assert host["names"] == {}
    assert host["addresses"][NEWS]["protocols"] == ["tls", "http", "dns", "stun"]


def test_report_normalises_names(flowlog: FlowLog, db_path: Path) -> None:
    flow_id = flowlog.flow_seen(TLS_FLOW, 100.0)
    flowlog.add_findings(flow_id, [("tls", "sni", "WWW.News.Test.")])
    flowlog.dns(100.0, CLIENT, "www.news.test", "203.0.113.99", True)
    names = report(db_path, BLOCKED_NAMES, BLOCKED_ADDRESSES)["hosts"][CLIENT]["names"]
    assert names == {
        "www.news.test": {
            "seen_as": ["tls sni", "dns query"],
            "blocked_destination": True,
            "poisoned": True,
        }
    }


def test_report_of_an_empty_log(flowlog: FlowLog, db_path: Path) -> None:
    assert report(db_path, BLOCKED_NAMES, BLOCKED_ADDRESSES) == {"hosts": {}, "measurements": []}


def test_report_reads_while_the_box_writes(flowlog: FlowLog, db_path: Path) -> None:
    flowlog.flow_seen(TLS_FLOW, 100.0)
    assert report(db_path, (), set())["hosts"][CLIENT]["flows"] == 1
    flowlog.flow_seen(HTTP_FLOW, 101.0)
    assert report(db_path, (), set())["hosts"][CLIENT]["flows"] == 2
