"""Issue 11, row 3: matchmaking stays linear however many volunteers poll.

Before, every poll and every offer scanned every open poll: 10,000 polls that reported
themselves full, plus one waiting offer, took 19.8 s a pass. The matchmaker now keeps its
open polls in a few heaps. These tests count the store reads one poll or one offer costs
(no clock: the timing is benchmarks/matchmaking.py's), and check, over random pools, that
the heaps choose exactly what the rule (`pick_volunteer` over every free poll) chooses.
"""

from __future__ import annotations

import random

from unwall.broker.matchmaker import (
    InMemoryMatchStore,
    Matchmaker,
    OfferAssigned,
    PollRecord,
    VolunteerRecord,
    pick_volunteer,
)
from unwall.wire.broker import ClientOffer, VolunteerPoll
from unwall.wire.nat import NAT_KINDS


class CountingStore(InMemoryMatchStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get_poll(self, poll_id: int) -> PollRecord | None:
        self.reads += 1
        return super().get_poll(poll_id)

    def get_volunteer(self, volunteer_id: str) -> VolunteerRecord | None:
        self.reads += 1
        return super().get_volunteer(volunteer_id)


def poll(i: int, *, clients: int = 0, nat: str = "port-restricted") -> VolunteerPoll:
    return VolunteerPoll(f"v{i}", capacity=4, clients=clients, kind="headless", nat=nat)  # type: ignore[arg-type]


def test_full_volunteers_cost_a_waiting_offer_nothing() -> None:
    """The issue's case: one offer waits; 10,000 volunteers poll, all full. Each poll
    costs a bounded number of store reads, not one per open poll."""
    store = CountingStore()
    matchmaker = Matchmaker(store=store)
    matchmaker.receive_offer(ClientOffer("v=0 offer"), now=0.0)
    costs = []
    for i in range(10_000):
        before = store.reads
        matchmaker.receive_poll(poll(i, clients=4), now=1.0)
        costs.append(store.reads - before)
    assert max(costs) <= 4, max(costs)
    assert matchmaker.waiting_offer_count == 1
    # One with room comes: the offer goes to it at once, for a bounded cost too.
    before = store.reads
    matchmaker.receive_poll(poll(10_000), now=2.0)
    assert store.reads - before <= 8
    assigned = [e for e in iter(matchmaker.next_event, None) if isinstance(e, OfferAssigned)]
    assert [e.volunteer_id for e in assigned] == ["v10000"]


def test_an_offer_among_many_free_volunteers_costs_little() -> None:
    store = CountingStore()
    matchmaker = Matchmaker(store=store)
    for i in range(10_000):
        matchmaker.receive_poll(poll(i, clients=i % 4, nat=NAT_KINDS[i % len(NAT_KINDS)]), 1.0)
    costs = []
    for n in range(100):
        before = store.reads
        matchmaker.receive_offer(ClientOffer(f"offer {n}"), now=2.0)
        costs.append(store.reads - before)
    assert max(costs) <= 40, max(costs)  # a few per NAT kind, not 10,000


def _free(store: InMemoryMatchStore) -> list[tuple[PollRecord, VolunteerRecord]]:
    """Every open poll of a volunteer with room: what the rule is stated over."""
    free = []
    for record in store.open_polls():
        volunteer = store.get_volunteer(record.volunteer_id)
        if volunteer is not None and not volunteer.is_full:
            free.append((record, volunteer))
    return free


def test_the_heaps_choose_what_the_rule_chooses() -> None:
    rng = random.Random(11)
    for _ in range(200):
        store = InMemoryMatchStore()
        matchmaker = Matchmaker(store=store)
        now = 0.0
        for _ in range(rng.randint(1, 40)):
            now += rng.random()
            capacity = rng.randint(1, 4)
            volunteer = VolunteerPoll(
                f"v{rng.randint(0, 25)}",  # some poll again: their old poll is superseded
                capacity=capacity,
                clients=rng.randint(0, capacity),
                kind="headless",
                nat=rng.choice(NAT_KINDS),
                relay=rng.random() < 0.1,
            )
            matchmaker.receive_poll(volunteer, now)
            if rng.random() < 0.2:  # some polls end meanwhile
                ids = [record.poll_id for record in store.open_polls()]
                if ids:
                    matchmaker.abandon_poll(rng.choice(ids), now)
        for _ in range(rng.randint(1, 10)):
            offer = ClientOffer("sdp", nat=rng.choice(NAT_KINDS), relay=rng.random() < 0.1)
            expected = pick_volunteer(_offer_record(offer), _free(store))
            matchmaker.receive_offer(offer, now)
            events = list(iter(matchmaker.next_event, None))
            got = [e.poll_id for e in events if isinstance(e, OfferAssigned)]
            assert got == ([] if expected is None else [expected[0].poll_id])


def _offer_record(offer: ClientOffer) -> object:
    from unwall.broker.matchmaker import OfferRecord

    return OfferRecord("x", offer.sdp, 0, 0.0, nat=offer.nat, relay=offer.relay)
