"""The volunteer's self-check verdict (sans-IO)."""

from __future__ import annotations

from unwall.volunteer.selfcheck import CLIENT_KINDS, SelfCheck, Verdict


def test_ready_and_who_can_reach_it() -> None:
    check = SelfCheck(None, None, "port-restricted", relay=False)
    assert check.verdict is Verdict.READY and check.ready
    assert check.reachable_kinds == ("none", "full-cone", "restricted", "port-restricted")
    assert check.line() == (
        "ready: broker and egress reachable; port-restricted NAT: clients behind 4 of 5 "
        "kinds of NAT can reach you"
    )
    assert SelfCheck(None, None, "none", relay=False).reachable_kinds == CLIENT_KINDS


def test_a_symmetric_nat_is_hard_to_reach_unless_a_relay_helps() -> None:
    hard = SelfCheck(None, None, "symmetric", relay=False)
    assert hard.verdict is Verdict.HARD_TO_REACH and hard.ready
    assert "symmetric" not in hard.reachable_kinds and "port-restricted" not in hard.reachable_kinds
    assert "TURN server" in hard.line()
    relayed = SelfCheck(None, None, "symmetric", relay=True)
    assert relayed.verdict is Verdict.READY and relayed.reachable_kinds == CLIENT_KINDS


def test_what_is_wrong_comes_first() -> None:
    both = SelfCheck("connection refused", "no answer in 10 s", "none", relay=False)
    assert both.verdict is Verdict.BROKER_UNREACHABLE and not both.ready
    assert both.line() == "NOT READY: cannot reach the broker (connection refused)"
    egress = SelfCheck(None, "HTTP 404", "unknown", relay=False)
    assert egress.verdict is Verdict.EGRESS_UNREACHABLE
    assert egress.as_dict()["verdict"] == "egress_unreachable"
    assert "NAT not measured" in SelfCheck(None, None, "unknown", relay=False).line()
