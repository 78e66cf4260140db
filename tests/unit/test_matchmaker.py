"""The sans-IO matchmaker, driven with a fake clock."""

from __future__ import annotations

import itertools
import random

import pytest

from unwall.broker.matchmaker import (
    Event,
    InMemoryMatchStore,
    Matchmaker,
    MatchmakerConfig,
    OfferAnswered,
    OfferAssigned,
    OfferExpired,
    PollReleased,
    VolunteerForgotten,
)
from unwall.wire.broker import ClientOffer, VolunteerAnswer, VolunteerPoll
from unwall.wire.nat import NAT_KINDS, NatKind, can_connect

CONFIG = MatchmakerConfig(poll_timeout=20.0, answer_timeout=10.0, volunteer_ttl=60.0)


def make_matchmaker(config: MatchmakerConfig = CONFIG) -> Matchmaker:
    counter = itertools.count(1)
    return Matchmaker(config, new_offer_id=lambda: f"offer{next(counter)}")


def vpoll(
    name: str,
    capacity: int = 8,
    clients: int = 0,
    nat: NatKind = "unknown",
    relay: bool = False,
) -> VolunteerPoll:
    return VolunteerPoll(f"volunteer-{name}", capacity, clients, "headless", nat, relay)


def answer(name: str, offer_id: str, sdp: str = "v=0 answer") -> VolunteerAnswer:
    return VolunteerAnswer(f"volunteer-{name}", offer_id, sdp)


def drain(mm: Matchmaker) -> list[Event]:
    events = []
    while (event := mm.next_event()) is not None:
        events.append(event)
    return events


def assigned(mm: Matchmaker) -> list[tuple[int, str, str]]:
    """(poll id, volunteer id, offer id) of every OfferAssigned event pending."""
    return [
        (e.poll_id, e.volunteer_id, e.offer_id) for e in drain(mm) if isinstance(e, OfferAssigned)
    ]


def test_offer_waits_for_a_poll() -> None:
    mm = make_matchmaker()
    offer_id = mm.receive_offer(ClientOffer("v=0 offer"), now=0.0)
    assert drain(mm) == []
    assert mm.waiting_offer_count == 1
    poll_id = mm.receive_poll(vpoll("a"), now=1.0)
    assert drain(mm) == [OfferAssigned(poll_id, "volunteer-a", offer_id, "v=0 offer")]
    assert mm.waiting_offer_count == 0
    assert mm.open_poll_count == 0


def test_poll_waits_for_an_offer_then_answer_round_trip() -> None:
    mm = make_matchmaker()
    poll_id = mm.receive_poll(vpoll("a"), now=0.0)
    assert drain(mm) == []
    assert mm.open_poll_count == 1
    offer_id = mm.receive_offer(ClientOffer("v=0 offer"), now=1.0)
    assert drain(mm) == [OfferAssigned(poll_id, "volunteer-a", offer_id, "v=0 offer")]
    assert mm.receive_answer(answer("a", offer_id), now=1.5)
    assert drain(mm) == [OfferAnswered(offer_id, "volunteer-a", "v=0 answer")]
    # Answered once: the offer no longer exists.
    assert not mm.receive_answer(answer("a", offer_id), now=1.6)
    assert drain(mm) == []


@pytest.mark.parametrize(
    ("loads", "winner"),
    [
        # (capacity, clients) per volunteer a, b, c in poll order; lowest load wins
        ([(8, 2), (8, 1), (2, 1)], "b"),
        ([(8, 4), (100, 10), (3, 1)], "b"),
        ([(1, 0), (8, 0), (2, 0)], "a"),  # all idle: tie, the longest waiting
        ([(8, 4), (2, 1), (4, 2)], "a"),  # all half-full: tie, the longest waiting
        ([(8, 8), (2, 2), (4, 3)], "c"),  # full ones never; c is the only one with room
        ([(1, 0), (1000, 999), (10, 9)], "a"),
    ],
)
def test_least_loaded_first_ties_to_longest_waiting(
    loads: list[tuple[int, int]], winner: str
) -> None:
    mm = make_matchmaker()
    for i, (name, (capacity, clients)) in enumerate(zip("abc", loads, strict=True)):
        mm.receive_poll(vpoll(name, capacity, clients), now=float(i))
    mm.receive_offer(ClientOffer("v=0"), now=5.0)
    [(_, volunteer_id, _)] = assigned(mm)
    assert volunteer_id == f"volunteer-{winner}"


def test_full_volunteer_is_never_offered() -> None:
    mm = make_matchmaker()
    poll_id = mm.receive_poll(vpoll("full", capacity=2, clients=2), now=0.0)
    offer_id = mm.receive_offer(ClientOffer("v=0"), now=0.0)
    assert drain(mm) == []
    mm.handle_timer(10.0)
    assert drain(mm) == [OfferExpired(offer_id, handed=False)]
    mm.handle_timer(20.0)
    assert drain(mm) == [PollReleased(poll_id, "timeout")]


def test_offers_are_served_fifo() -> None:
    mm = make_matchmaker()
    offers = [mm.receive_offer(ClientOffer(f"v=0 {i}"), now=float(i)) for i in range(4)]
    got: list[str] = []
    for i, name in enumerate("abcd"):
        mm.receive_poll(vpoll(name), now=5.0 + i)
        got.extend(offer_id for _, _, offer_id in assigned(mm))
    assert got == offers


def test_capacity_is_never_exceeded() -> None:
    """A randomised run: volunteers answer every offer and report their true load."""
    rng = random.Random(7)
    mm = make_matchmaker()
    capacity = {name: rng.randint(1, 4) for name in "abcdef"}
    clients = dict.fromkeys(capacity, 0)
    owner: dict[int, str] = {}
    now = 0.0
    handed = 0

    def poll(name: str) -> None:
        owner[mm.receive_poll(vpoll(name, capacity[name], clients[name]), now)] = name

    def react(event: Event) -> None:
        nonlocal handed
        if isinstance(event, OfferAssigned):
            name = owner[event.poll_id]
            clients[name] += 1
            handed += 1
            assert clients[name] <= capacity[name]
            assert mm.receive_answer(answer(name, event.offer_id), now)
            poll(name)
        elif isinstance(event, PollReleased) and event.reason == "timeout":
            poll(owner[event.poll_id])

    for name in capacity:
        poll(name)
    for _ in range(500):
        now += 0.1
        if rng.random() < 0.5:
            mm.receive_offer(ClientOffer("v=0"), now)
        else:  # a client leaves somewhere; that volunteer reports at once
            name = rng.choice(list(capacity))
            clients[name] = max(0, clients[name] - 1)
            poll(name)
        mm.handle_timer(now)
        while events := drain(mm):
            for event in events:
                react(event)
    assert handed > 200


def test_each_poll_reports_the_load_afresh() -> None:
    mm = make_matchmaker()
    mm.receive_poll(vpoll("a", capacity=1, clients=0), now=0.0)
    mm.receive_offer(ClientOffer("v=0"), now=0.0)
    assert [v for _, v, _ in assigned(mm)] == ["volunteer-a"]
    # Now full: its next poll is never given an offer.
    mm.receive_poll(vpoll("a", capacity=1, clients=1), now=1.0)
    mm.receive_offer(ClientOffer("v=0"), now=1.0)
    assert drain(mm) == []
    # The connection failed after all; the next report frees the slot.
    mm.receive_poll(vpoll("a", capacity=1, clients=0), now=2.0)
    assert [type(e) for e in drain(mm)] == [PollReleased, OfferAssigned]


def test_new_poll_supersedes_the_old_one() -> None:
    mm = make_matchmaker()
    first = mm.receive_poll(vpoll("a"), now=0.0)
    second = mm.receive_poll(vpoll("a"), now=1.0)
    assert drain(mm) == [PollReleased(first, "superseded")]
    assert mm.open_poll_count == 1
    assert mm.volunteer_count == 1
    offer_id = mm.receive_offer(ClientOffer("v=0"), now=2.0)
    assert assigned(mm) == [(second, "volunteer-a", offer_id)]


def test_poll_times_out_idle() -> None:
    mm = make_matchmaker()
    poll_id = mm.receive_poll(vpoll("a"), now=100.0)
    assert mm.get_timer() == 120.0
    mm.handle_timer(119.9)
    assert drain(mm) == []
    mm.handle_timer(120.0)
    assert drain(mm) == [PollReleased(poll_id, "timeout")]
    assert mm.open_poll_count == 0
    assert mm.volunteer_count == 1  # still known: seen just now


def test_offer_times_out_unanswered() -> None:
    mm = make_matchmaker()
    poll_id = mm.receive_poll(vpoll("a"), now=0.0)
    offer_id = mm.receive_offer(ClientOffer("v=0"), now=3.0)
    assert assigned(mm) == [(poll_id, "volunteer-a", offer_id)]
    assert mm.get_timer() == 13.0
    mm.handle_timer(12.999)
    assert drain(mm) == []
    mm.handle_timer(13.0)
    assert drain(mm) == [OfferExpired(offer_id, handed=True)]
    assert not mm.receive_answer(answer("a", offer_id), now=13.5)
    assert drain(mm) == []


def test_answer_must_come_from_the_volunteer_given_the_offer() -> None:
    mm = make_matchmaker()
    mm.receive_poll(vpoll("a"), now=0.0)
    queued = mm.receive_offer(ClientOffer("v=0"), now=0.0)
    assert not mm.receive_answer(answer("b", queued), now=0.5)
    assert mm.receive_answer(answer("a", queued), now=0.5)
    # An offer still in the queue was given to nobody.
    waiting = mm.receive_offer(ClientOffer("v=0"), now=1.0)
    assert not mm.receive_answer(answer("a", waiting), now=1.0)
    assert not mm.receive_answer(answer("a", "no-such-offer"), now=1.0)
    assert mm.waiting_offer_count == 1


def test_silent_volunteers_are_forgotten() -> None:
    mm = make_matchmaker()
    mm.receive_poll(vpoll("a"), now=0.0)
    mm.receive_poll(vpoll("b"), now=30.0)
    mm.handle_timer(20.0)  # a's poll ends; its ttl starts
    mm.handle_timer(50.0)  # b's poll ends ...
    mm.receive_poll(vpoll("b"), now=50.0)  # ... and b polls again; a stays silent
    assert [type(e) for e in drain(mm)] == [PollReleased, PollReleased]
    assert mm.volunteer_count == 2
    assert mm.get_timer() == 70.0  # b's poll
    mm.handle_timer(70.0)
    mm.receive_poll(vpoll("b"), now=70.0)
    drain(mm)
    mm.handle_timer(79.9)
    assert drain(mm) == []
    mm.handle_timer(80.0)
    assert drain(mm) == [VolunteerForgotten("volunteer-a")]
    assert mm.volunteer_count == 1


def test_a_volunteer_with_an_open_poll_is_not_forgotten() -> None:
    mm = make_matchmaker(
        MatchmakerConfig(poll_timeout=20.0, answer_timeout=10.0, volunteer_ttl=5.0)
    )
    mm.receive_poll(vpoll("a"), now=0.0)
    mm.handle_timer(19.0)
    assert drain(mm) == []
    assert mm.volunteer_count == 1
    mm.handle_timer(20.0)
    drain(mm)
    assert mm.get_timer() == 25.0
    mm.handle_timer(25.0)
    assert drain(mm) == [VolunteerForgotten("volunteer-a")]
    assert mm.get_timer() is None


def test_answering_keeps_a_volunteer_known() -> None:
    mm = make_matchmaker()
    mm.receive_poll(vpoll("a"), now=0.0)
    offer_id = mm.receive_offer(ClientOffer("v=0"), now=1.0)
    drain(mm)
    assert mm.receive_answer(answer("a", offer_id), now=9.0)
    drain(mm)
    mm.handle_timer(61.0)
    assert drain(mm) == []
    mm.handle_timer(69.0)
    assert drain(mm) == [VolunteerForgotten("volunteer-a")]


def test_cancelled_poll_puts_its_offer_back_at_the_head_of_the_queue() -> None:
    mm = make_matchmaker()
    dead = mm.receive_poll(vpoll("a"), now=0.0)
    first = mm.receive_offer(ClientOffer("v=0 first"), now=1.0)
    assert assigned(mm) == [(dead, "volunteer-a", first)]
    second = mm.receive_offer(ClientOffer("v=0 second"), now=2.0)
    # The shell could not deliver `first` to the dead poll: it goes back, ahead of `second`.
    mm.abandon_poll(dead, now=2.5)
    assert drain(mm) == []
    assert mm.waiting_offer_count == 2
    live = mm.receive_poll(vpoll("b"), now=3.0)
    assert assigned(mm) == [(live, "volunteer-b", first)]
    assert not mm.receive_answer(answer("a", first), now=3.5)  # no longer a's
    assert mm.receive_answer(answer("b", first), now=3.5)
    mm.abandon_poll(dead, now=4.0)  # twice does no harm
    assert mm.waiting_offer_count == 1
    assert [e for e in drain(mm) if isinstance(e, OfferAnswered)] == [
        OfferAnswered(first, "volunteer-b", "v=0 answer")
    ]
    assert second  # still queued
    # Its deadline is unchanged by the detour.
    mm.handle_timer(11.0)
    assert drain(mm) == []  # `first` was answered
    mm.handle_timer(12.0)
    assert drain(mm) == [OfferExpired(second, handed=False)]


def test_cancelled_poll_offer_goes_straight_to_another_open_poll() -> None:
    mm = make_matchmaker()
    dead = mm.receive_poll(vpoll("a", clients=0), now=0.0)
    other = mm.receive_poll(vpoll("b", clients=1), now=0.5)
    offer_id = mm.receive_offer(ClientOffer("v=0"), now=1.0)
    assert assigned(mm) == [(dead, "volunteer-a", offer_id)]
    mm.abandon_poll(dead, now=1.1)
    assert assigned(mm) == [(other, "volunteer-b", offer_id)]


def test_abandoned_open_poll_gets_no_offer() -> None:
    mm = make_matchmaker()
    poll_id = mm.receive_poll(vpoll("a"), now=0.0)
    mm.abandon_poll(poll_id, now=1.0)
    assert mm.open_poll_count == 0
    mm.receive_offer(ClientOffer("v=0"), now=2.0)
    assert drain(mm) == []
    assert mm.waiting_offer_count == 1
    mm.handle_timer(20.0)
    assert [e for e in drain(mm) if isinstance(e, PollReleased)] == []  # given up already


def test_abandoned_offer_is_dropped() -> None:
    mm = make_matchmaker()
    queued = mm.receive_offer(ClientOffer("v=0"), now=0.0)
    mm.abandon_offer(queued, now=1.0)
    assert mm.waiting_offer_count == 0
    mm.receive_poll(vpoll("a"), now=2.0)
    assert drain(mm) == []
    handed = mm.receive_offer(ClientOffer("v=0"), now=3.0)
    drain(mm)
    mm.abandon_offer(handed, now=4.0)
    assert not mm.receive_answer(answer("a", handed), now=4.5)
    mm.handle_timer(13.0)
    assert drain(mm) == []  # nothing left to expire


def test_get_timer_skips_settled_deadlines() -> None:
    mm = make_matchmaker()
    assert mm.get_timer() is None
    mm.receive_poll(vpoll("a"), now=0.0)
    offer_id = mm.receive_offer(ClientOffer("v=0"), now=1.0)
    drain(mm)
    mm.receive_answer(answer("a", offer_id), now=2.0)
    # The poll (20 s) and the offer (11 s) are settled; only a's ttl (2 + 60) is left.
    assert mm.get_timer() == 62.0


def test_offer_ids_are_unique_and_unguessable_by_default() -> None:
    mm = Matchmaker(CONFIG, store=InMemoryMatchStore())
    ids = {mm.receive_offer(ClientOffer("v=0"), now=0.0) for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 22 for i in ids)
    duplicate = Matchmaker(CONFIG, new_offer_id=iter(["x", "x", "y"]).__next__)
    assert duplicate.receive_offer(ClientOffer("v=0"), 0.0) == "x"
    assert duplicate.receive_offer(ClientOffer("v=0"), 0.0) == "y"


@pytest.mark.parametrize("field", ["poll_timeout", "answer_timeout", "volunteer_ttl"])
def test_config_refuses_non_positive_timeouts(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        MatchmakerConfig(**{field: 0.0})


# -- NAT-aware matching -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "volunteer"), [(c, v) for c in NAT_KINDS for v in NAT_KINDS], ids=str
)
def test_a_client_gets_only_volunteers_it_can_connect_to(
    client: NatKind, volunteer: NatKind
) -> None:
    mm = make_matchmaker()
    mm.receive_poll(vpoll("a", nat=volunteer), now=0.0)
    offer_id = mm.receive_offer(ClientOffer("v=0", nat=client), now=1.0)
    if can_connect(client, volunteer):
        assert [o for _, _, o in assigned(mm)] == [offer_id]
    else:
        assert drain(mm) == []
        mm.handle_timer(11.0)
        assert drain(mm) == [OfferExpired(offer_id, handed=False, incompatible=True)]


@pytest.mark.parametrize("kind", ["symmetric", "port-restricted"])
def test_a_relay_on_either_side_makes_any_pair_work(kind: NatKind) -> None:
    mm = make_matchmaker()
    mm.receive_poll(vpoll("a", nat="symmetric"), now=0.0)
    mm.receive_offer(ClientOffer("v=0", nat=kind, relay=True), now=1.0)
    assert [v for _, v, _ in assigned(mm)] == ["volunteer-a"]
    mm.receive_poll(vpoll("b", nat="symmetric", relay=True), now=2.0)
    mm.receive_offer(ClientOffer("v=0", nat=kind), now=3.0)
    assert [v for _, v, _ in assigned(mm)] == ["volunteer-b"]


# (volunteers in poll order as (name, nat, clients), client NAT, the one chosen)
PREFERENCES: list[tuple[list[tuple[str, NatKind, int]], NatKind, str]] = [
    # the most restrictive NAT the client can use goes first; open ones are kept back
    ([("open", "full-cone", 0), ("sym", "symmetric", 0)], "full-cone", "sym"),
    ([("open", "none", 0), ("pr", "port-restricted", 0)], "none", "pr"),
    (
        [("open", "none", 0), ("r", "restricted", 0), ("pr", "port-restricted", 0)],
        "restricted",
        "pr",
    ),
    # ... even a busier one: the restriction outranks the load
    ([("open", "full-cone", 0), ("pr", "port-restricted", 6)], "full-cone", "pr"),
    # a symmetric client cannot use the port-restricted one; restricted beats open
    ([("open", "none", 0), ("pr", "port-restricted", 0), ("r", "restricted", 0)], "symmetric", "r"),
    ([("open", "none", 0), ("pr", "port-restricted", 0)], "symmetric", "open"),
    # unknown volunteers go before the known-open ones, after every known restriction
    ([("open", "none", 0), ("?", "unknown", 0)], "unknown", "?"),
    ([("?", "unknown", 0), ("r", "restricted", 0)], "port-restricted", "r"),
    # the same kind: least loaded, then longest waiting
    ([("r1", "restricted", 3), ("r2", "restricted", 1)], "none", "r2"),
    ([("r1", "restricted", 1), ("r2", "restricted", 1)], "none", "r1"),
]


@pytest.mark.parametrize(("volunteers", "client", "winner"), PREFERENCES)
def test_restrictive_volunteers_first_open_ones_kept(
    volunteers: list[tuple[str, NatKind, int]], client: NatKind, winner: str
) -> None:
    mm = make_matchmaker()
    for i, (name, nat, clients) in enumerate(volunteers):
        mm.receive_poll(vpoll(name, clients=clients, nat=nat), now=float(i))
    mm.receive_offer(ClientOffer("v=0", nat=client), now=5.0)
    [(_, volunteer_id, _)] = assigned(mm)
    assert volunteer_id == f"volunteer-{winner}"


def test_a_relay_volunteer_is_kept_for_last() -> None:
    mm = make_matchmaker()
    mm.receive_poll(vpoll("relay", nat="symmetric", relay=True), now=0.0)
    mm.receive_poll(vpoll("open", nat="none"), now=1.0)
    mm.receive_offer(ClientOffer("v=0", nat="none"), now=2.0)
    assert [v for _, v, _ in assigned(mm)] == ["volunteer-open"]


def test_keeping_open_volunteers_serves_everyone() -> None:
    """Two clients, two volunteers: least-loaded-first alone could strand the symmetric one."""
    mm = make_matchmaker()
    mm.receive_poll(vpoll("open", capacity=1, nat="full-cone"), now=0.0)
    mm.receive_poll(vpoll("pr", capacity=1, nat="port-restricted"), now=1.0)
    easy = mm.receive_offer(ClientOffer("v=0", nat="full-cone"), now=2.0)
    hard = mm.receive_offer(ClientOffer("v=0", nat="symmetric"), now=3.0)
    assert {(v, o) for _, v, o in assigned(mm)} == {
        ("volunteer-pr", easy),
        ("volunteer-open", hard),
    }


def test_an_offer_nobody_can_serve_does_not_hold_up_the_queue() -> None:
    mm = make_matchmaker()
    stuck = mm.receive_offer(ClientOffer("v=0", nat="symmetric"), now=0.0)
    served = mm.receive_offer(ClientOffer("v=0", nat="full-cone"), now=1.0)
    poll_id = mm.receive_poll(vpoll("pr", nat="port-restricted"), now=2.0)
    assert assigned(mm) == [(poll_id, "volunteer-pr", served)]
    assert mm.waiting_offer_count == 1
    # A volunteer it can use arrives before its deadline: it is served after all.
    late = mm.receive_poll(vpoll("open", nat="none"), now=5.0)
    assert assigned(mm) == [(late, "volunteer-open", stuck)]


def test_no_volunteer_at_all_is_not_incompatible() -> None:
    mm = make_matchmaker()
    offer_id = mm.receive_offer(ClientOffer("v=0", nat="symmetric"), now=0.0)
    mm.handle_timer(10.0)
    assert drain(mm) == [OfferExpired(offer_id, handed=False, incompatible=False)]


def test_compatible_but_full_volunteers_leave_only_incompatible_ones() -> None:
    mm = make_matchmaker()
    mm.receive_poll(vpoll("open", capacity=1, clients=1, nat="none"), now=0.0)
    mm.receive_poll(vpoll("sym", nat="symmetric"), now=0.0)
    offer_id = mm.receive_offer(ClientOffer("v=0", nat="symmetric"), now=1.0)
    mm.handle_timer(11.0)
    assert OfferExpired(offer_id, handed=False, incompatible=True) in drain(mm)


def test_volunteers_by_nat() -> None:
    mm = make_matchmaker()
    mm.receive_poll(vpoll("a", nat="symmetric"), now=0.0)
    mm.receive_poll(vpoll("b", nat="symmetric"), now=0.0)
    mm.receive_poll(vpoll("c"), now=0.0)
    counts = mm.volunteers_by_nat()
    assert counts == {**dict.fromkeys(NAT_KINDS, 0), "symmetric": 2, "unknown": 1}
