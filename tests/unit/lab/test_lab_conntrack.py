"""The box's kernel side, as data: conntrack event lines in, flow events out; and the
iptables rules that hand first packets to the daemon and apply its verdicts."""

from __future__ import annotations

import pytest

from unwall.lab.box import QUEUE_NUM, ConntrackEvent, box_rules, parse_conntrack_event
from unwall.lab.inspector import MARK_ALLOW, MARK_DROP, MARK_RST
from unwall.lab.topology import BOX_INSIDE_IP

# -- conntrack events ---------------------------------------------------------------------

# As `conntrack -E -e NEW,DESTROY -o timestamp,extended` prints them: the timestamp, a tab,
# the event type right-aligned in 9 columns, then the entry. DESTROY carries the counters
# of both directions (nf_conntrack_acct) and delta-time (nf_conntrack_timestamp).
TCP_NEW = (
    "[1700000000.123456]\t    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=198.51.100.10 "
    "dst=203.0.113.80 sport=40000 dport=80 [UNREPLIED] src=203.0.113.80 dst=203.0.113.1 "
    "sport=80 dport=40000\n"
)
TCP_DESTROY = (
    "[1700000000.123456]  [DESTROY] ipv4     2 tcp      6 src=198.51.100.10 dst=203.0.113.80 "
    "sport=40000 dport=80 packets=6 bytes=400 src=203.0.113.80 dst=203.0.113.1 sport=80 "
    "dport=40000 packets=5 bytes=900 [ASSURED] mark=1 delta-time=3 use=1"
)
UDP_NEW = (
    "[1700000100.000042]\t    [NEW] ipv4     2 udp      17 30 src=198.51.100.10 "
    "dst=203.0.113.81 sport=50000 dport=443 [UNREPLIED] src=203.0.113.81 dst=203.0.113.1 "
    "sport=443 dport=50000\n"
)
UDP_DESTROY = (
    "[1700000130.500000]\t[DESTROY] ipv4     2 udp      17 src=198.51.100.10 "
    "dst=203.0.113.81 sport=50000 dport=443 packets=30 bytes=5000 src=203.0.113.81 "
    "dst=203.0.113.1 sport=443 dport=50000 packets=40 bytes=50000 mark=1 delta-time=30 use=1\n"
)
UDP_DESTROY_UNREPLIED = (
    "[1700000200.250000]\t[DESTROY] ipv4     2 udp      17 src=198.51.100.10 "
    "dst=203.0.113.80 sport=50001 dport=443 packets=3 bytes=3600 [UNREPLIED] "
    "src=203.0.113.80 dst=203.0.113.1 sport=443 dport=50001 packets=0 bytes=0 mark=2 "
    "delta-time=1 use=1\n"
)
TCP_DESTROY_NO_ACCOUNTING = (
    "[1700000300.000001]\t[DESTROY] ipv4     2 tcp      6 src=198.51.100.10 "
    "dst=203.0.113.80 sport=40002 dport=443 src=203.0.113.80 dst=203.0.113.1 sport=443 "
    "dport=40002 [ASSURED] mark=3 use=1\n"
)
TCP_DESTROY_ZONE = (
    "[1700000400.000000]\t[DESTROY] ipv4     2 tcp      6 src=198.51.100.10 "
    "dst=203.0.113.80 sport=40003 dport=443 packets=1 bytes=60 src=203.0.113.80 "
    "dst=203.0.113.1 sport=443 dport=40003 packets=1 bytes=40 mark=2 zone=1 delta-time=0 "
    "use=1\n"
)

# (id, line, the event)
EVENTS = [
    (
        "tcp-new",
        TCP_NEW,
        ConntrackEvent(
            time=1700000000.123456,
            type="NEW",
            protocol="tcp",
            src="198.51.100.10",
            dst="203.0.113.80",
            sport=40000,
            dport=80,
        ),
    ),
    (
        "tcp-destroy",
        TCP_DESTROY,
        ConntrackEvent(
            time=1700000000.123456,
            type="DESTROY",
            protocol="tcp",
            src="198.51.100.10",
            dst="203.0.113.80",
            sport=40000,
            dport=80,
            counters=(6, 400, 5, 900),
            start=1700000000.123456 - 3,
        ),
    ),
    (
        "udp-new",
        UDP_NEW,
        ConntrackEvent(
            time=1700000100.000042,
            type="NEW",
            protocol="udp",
            src="198.51.100.10",
            dst="203.0.113.81",
            sport=50000,
            dport=443,
        ),
    ),
    (
        "udp-destroy",
        UDP_DESTROY,
        ConntrackEvent(
            time=1700000130.5,
            type="DESTROY",
            protocol="udp",
            src="198.51.100.10",
            dst="203.0.113.81",
            sport=50000,
            dport=443,
            counters=(30, 5000, 40, 50000),
            start=1700000100.5,
        ),
    ),
    (
        "udp-destroy-unreplied",
        UDP_DESTROY_UNREPLIED,
        ConntrackEvent(
            time=1700000200.25,
            type="DESTROY",
            protocol="udp",
            src="198.51.100.10",
            dst="203.0.113.80",
            sport=50001,
            dport=443,
            counters=(3, 3600, 0, 0),
            start=1700000199.25,
        ),
    ),
    (
        "tcp-destroy-no-accounting-no-timestamps",
        TCP_DESTROY_NO_ACCOUNTING,
        ConntrackEvent(
            time=1700000300.000001,
            type="DESTROY",
            protocol="tcp",
            src="198.51.100.10",
            dst="203.0.113.80",
            sport=40002,
            dport=443,
            counters=(0, 0, 0, 0),
            start=None,
        ),
    ),
    (
        "tcp-destroy-zone",
        TCP_DESTROY_ZONE,
        ConntrackEvent(
            time=1700000400.0,
            type="DESTROY",
            protocol="tcp",
            src="198.51.100.10",
            dst="203.0.113.80",
            sport=40003,
            dport=443,
            counters=(1, 60, 1, 40),
            start=1700000400.0,
        ),
    ),
]


@pytest.mark.parametrize(
    ("line", "expected"), [case[1:] for case in EVENTS], ids=[case[0] for case in EVENTS]
)
def test_parse_conntrack_event(line: str, expected: ConntrackEvent) -> None:
    assert parse_conntrack_event(line) == expected


def test_the_original_direction_comes_first() -> None:
    """The reply tuple (server to the box's outside address, after NAT) is not the flow."""
    event = parse_conntrack_event(TCP_DESTROY)
    assert event is not None
    assert (event.src, event.sport, event.dst, event.dport) == (
        "198.51.100.10",
        40000,
        "203.0.113.80",
        80,
    )
    assert event.counters[:2] == (6, 400)  # packets and bytes out: client to server
    assert event.counters[2:] == (5, 900)  # and back


# (id, line) of what is not a tcp or udp IPv4 NEW or DESTROY event
IGNORED = [
    (
        "icmp-new",
        "[1700000000.000001]\t    [NEW] ipv4     2 icmp     1 30 src=198.51.100.10 "
        "dst=203.0.113.80 type=8 code=0 id=7 [UNREPLIED] src=203.0.113.80 dst=203.0.113.1 "
        "type=0 code=0 id=7\n",
    ),
    (
        "icmp-destroy",
        "[1700000030.000001]\t[DESTROY] ipv4     2 icmp     1 src=198.51.100.10 "
        "dst=203.0.113.80 type=8 code=0 id=7 packets=1 bytes=84 src=203.0.113.80 "
        "dst=203.0.113.1 type=0 code=0 id=7 packets=1 bytes=84 mark=1 delta-time=30 use=1\n",
    ),
    (
        "ipv6-tcp-new",
        "[1700000000.000001]\t    [NEW] ipv6     10 tcp      6 120 SYN_SENT src=2001:db8::10 "
        "dst=2001:db8:1::80 sport=40000 dport=443 [UNREPLIED] src=2001:db8:1::80 "
        "dst=2001:db8::10 sport=443 dport=40000\n",
    ),
    (
        "ipv6-udp-destroy",
        "[1700000000.000001]\t[DESTROY] ipv6     10 udp      17 src=2001:db8::10 "
        "dst=2001:db8:1::80 sport=50000 dport=443 packets=1 bytes=1250 src=2001:db8:1::80 "
        "dst=2001:db8::10 sport=443 dport=50000 packets=0 bytes=0 mark=2 delta-time=1 use=1\n",
    ),
    (
        "update",
        "[1700000000.000001]\t [UPDATE] ipv4     2 tcp      6 60 SYN_RECV src=198.51.100.10 "
        "dst=203.0.113.80 sport=40000 dport=80 src=203.0.113.80 dst=203.0.113.1 sport=80 "
        "dport=40000 mark=1\n",
    ),
    (
        "sctp",
        "[1700000000.000001]\t    [NEW] ipv4     2 sctp     132 10 CLOSED src=198.51.100.10 "
        "dst=203.0.113.80 sport=5000 dport=5000 [UNREPLIED] src=203.0.113.80 "
        "dst=203.0.113.1 sport=5000 dport=5000\n",
    ),
    (
        "no-timestamp",
        "    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=198.51.100.10 dst=203.0.113.80 "
        "sport=40000 dport=80 [UNREPLIED] src=203.0.113.80 dst=203.0.113.1 sport=80 "
        "dport=40000\n",
    ),
    (
        "no-ports",
        "[1700000000.000001]\t    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=198.51.100.10 "
        "dst=203.0.113.80\n",
    ),
    ("summary", "conntrack v1.4.7 (conntrack-tools): 12 flow events have been shown.\n"),
    ("empty", ""),
    ("newline", "\n"),
    ("garbage", "\x00\xff [NEW] src=dst= sport=x"),
    ("stamp-only", "[1700000000.000001]\t[DESTROY]"),
    (
        "bad-stamp",
        "[now]\t    [NEW] ipv4     2 tcp      6 120 src=1.2.3.4 dst=5.6.7.8 sport=1 dport=2",
    ),
]


@pytest.mark.parametrize("line", [case[1] for case in IGNORED], ids=[case[0] for case in IGNORED])
def test_parse_conntrack_event_ignores(line: str) -> None:
    assert parse_conntrack_event(line) is None


# -- iptables rules -----------------------------------------------------------------------


def forward_rules() -> list[list[str]]:
    """The FORWARD rules, without the leading `iptables -A FORWARD`."""
    rules = []
    for rule in box_rules():
        assert rule[0] == "iptables"
        if rule[1:3] == ["-A", "FORWARD"]:
            rules.append(rule[3:])
    return rules


def argv(command: str) -> list[str]:
    return command.split()


def index_of(rules: list[list[str]], rule: list[str]) -> int:
    assert rule in rules, f"{rule} not among {rules}"
    return rules.index(rule)


SAVE_MARK = argv("-m mark ! --mark 0 -j CONNMARK --save-mark")
NFQUEUE = argv(f"-j NFQUEUE --queue-num {QUEUE_NUM}")

# (id, the verdict rule); listed in the order they must come in
VERDICT_RULES = [
    ("allow", argv(f"-m connmark --mark {MARK_ALLOW} -j ACCEPT")),
    ("rst-tcp", argv(f"-p tcp -m connmark --mark {MARK_RST} -j REJECT --reject-with tcp-reset")),
    ("rst-other", argv(f"-m connmark --mark {MARK_RST} -j DROP")),
    ("drop", argv(f"-m connmark --mark {MARK_DROP} -j DROP")),
]


def test_every_rule_is_an_iptables_command() -> None:
    for rule in box_rules():
        assert rule[0] == "iptables"
        assert all(isinstance(word, str) and word for word in rule)


def test_dns_goes_to_the_boxs_resolver() -> None:
    dnat = [rule for rule in box_rules() if "DNAT" in rule]
    assert dnat == [
        argv(
            "iptables -t nat -A PREROUTING -i b0 -p udp --dport 53"
            f" -j DNAT --to-destination {BOX_INSIDE_IP}:53"
        )
    ]


def test_nfqueue_fails_closed() -> None:
    """Without the daemon, undecided packets are dropped, not let through."""
    assert not any("--queue-bypass" in rule for rule in box_rules())
    assert not any("--queue-bypass" in word for rule in box_rules() for word in rule)
    rules = forward_rules()
    assert [rule for rule in rules if "NFQUEUE" in rule] == [NFQUEUE]


def test_nfqueue_is_the_last_forward_rule() -> None:
    """Everything a verdict covers is settled before a packet could be queued."""
    assert forward_rules()[-1] == NFQUEUE


def test_the_mark_is_saved_before_any_connmark_verdict() -> None:
    """A packet the daemon marks and repeats has its mark copied to the flow first, so
    the verdict rules just after apply to it, and to the rest of its flow."""
    rules = forward_rules()
    save = index_of(rules, SAVE_MARK)
    assert save == 0
    for rule in rules:
        if "connmark" in rule:
            assert index_of(rules, rule) > save


@pytest.mark.parametrize(
    "rule", [case[1] for case in VERDICT_RULES], ids=[case[0] for case in VERDICT_RULES]
)
def test_verdict_rules_come_between_save_and_queue(rule: list[str]) -> None:
    rules = forward_rules()
    assert index_of(rules, SAVE_MARK) < index_of(rules, rule) < index_of(rules, NFQUEUE)


def test_verdict_rules_order() -> None:
    """The TCP reset must come before the catch-all drop of the same mark."""
    rules = forward_rules()
    positions = [index_of(rules, rule) for _, rule in VERDICT_RULES]
    assert positions == sorted(positions)
    assert rules == [SAVE_MARK, *(rule for _, rule in VERDICT_RULES), NFQUEUE]


def test_every_verdict_mark_has_a_rule() -> None:
    rules = forward_rules()
    for mark in (MARK_ALLOW, MARK_DROP, MARK_RST):
        assert any(
            rule[rule.index("connmark") :][:3] == ["connmark", "--mark", str(mark)]
            for rule in rules
            if "connmark" in rule
        ), mark
