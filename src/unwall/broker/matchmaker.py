"""Matchmaking between client offers and polling volunteers, as a plain object.

No sockets, no tasks, no clock of its own (the aioquic shape): every method takes the inputs
and ``now``; decisions come out as events that the caller pulls with :meth:`next_event`; the
caller asks :meth:`get_timer` when to call :meth:`handle_timer` next.

The rules are those of docs/protocol.md, "Matchmaking":

- client offers wait in FIFO order, but one no free volunteer can serve does not hold up
  the offers behind it;
- an offer goes only to a volunteer it can connect to: the client or the volunteer has a
  TURN relay, or their NAT kinds can meet directly (:func:`unwall.wire.nat.can_connect`);
- among those it goes to the most restrictive NAT (symmetric first, open NATs and relays
  last, so that they stay free for the clients only they can serve, as Snowflake does),
  then to the lowest load, ``(clients + handed) / capacity`` where ``handed`` counts offers
  handed to it since its last report; ties go to the poll that has waited longest
  (:func:`pick_volunteer`, a pure function over the free volunteers);
- a volunteer whose ``clients + handed`` reaches its capacity is never handed an offer;
- a poll ends idle after ``poll_timeout``; an offer nobody answered expires after
  ``answer_timeout`` (marked ``incompatible`` if free volunteers were there but none it
  could connect to); a volunteer with no open poll for ``volunteer_ttl`` is forgotten.

A volunteer keeps one poll open at a time: a new poll from the same volunteer releases the
older one (idle). Offer ids are secrets: an answer is accepted only from the volunteer the
offer was handed to.

State lives behind :class:`MatchStore` as immutable records, so that a shared store (Redis)
can replace :class:`InMemoryMatchStore` without touching the rules. Timers are kept here, in
memory: they belong to the requests this process is holding open.
"""

from __future__ import annotations

import bisect
import heapq
import secrets
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from unwall.broker.guard import GROUPS_MIN_POOL, NetworkShares, volunteer_group
from unwall.wire.broker import ClientOffer, VolunteerAnswer, VolunteerKind, VolunteerPoll
from unwall.wire.nat import NAT_KINDS, RESTRICTIVENESS, NatKind, can_connect

# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchmakerConfig:
    """Timeouts, in seconds, with the protocol's defaults."""

    poll_timeout: float = 20.0
    answer_timeout: float = 10.0
    volunteer_ttl: float = 60.0
    #: the harvest guard (unwall.broker.guard): client networks see a part of the pool,
    #: and no volunteer network gets more than its share of offers
    guard: bool = True

    def __post_init__(self) -> None:
        for name in ("poll_timeout", "answer_timeout", "volunteer_ttl"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds")


# -- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfferAssigned:
    """Send this offer as the response to poll ``poll_id``.

    If that poll's request is gone, call :meth:`Matchmaker.abandon_poll` and the offer goes
    back to the queue.
    """

    poll_id: int
    volunteer_id: str
    offer_id: str
    sdp: str
    relay_url: str | None = None


@dataclass(frozen=True)
class PollReleased:
    """Answer poll ``poll_id`` idle: it timed out, or the volunteer opened a newer poll."""

    poll_id: int
    reason: Literal["timeout", "superseded"]


@dataclass(frozen=True)
class OfferAnswered:
    """Send this answer as the response to the client's offer ``offer_id``."""

    offer_id: str
    volunteer_id: str
    sdp: str


@dataclass(frozen=True)
class OfferExpired:
    """No answer for offer ``offer_id`` within answer_timeout: tell the client no_volunteer.

    ``handed`` says whether a volunteer got the offer (and did not answer) or none was free;
    ``incompatible`` that, never handed, it was passed over: volunteers were free, but none
    the client could connect to (tell it no_compatible_volunteer).
    """

    offer_id: str
    handed: bool
    incompatible: bool = False


@dataclass(frozen=True)
class VolunteerForgotten:
    """A volunteer has not polled for volunteer_ttl and no longer counts."""

    volunteer_id: str


Event = OfferAssigned | PollReleased | OfferAnswered | OfferExpired | VolunteerForgotten


# -- records and their store ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VolunteerRecord:
    volunteer_id: str
    kind: VolunteerKind
    capacity: int
    clients: int
    handed: int  # offers handed to it since its last report
    report: int  # how many reports (polls) it has made; tags offers handed under each
    last_seen: float
    poll_id: int | None  # its open poll
    nat: NatKind = "unknown"
    relay: bool = False  # it has a TURN server of its own
    network: str = ""  # the /24 or /48 it polls from ("" unknown)
    group: int = 0  # its group (guard.volunteer_group)
    #: the client networks the egress saw it carry sessions for (None: the broker keeps no
    #: such record, and believes every report)
    proven: int | None = None
    #: when offers were handed to it, within EARNED_WINDOW (kept while it is earning)
    recent: tuple[float, ...] = ()

    @property
    def earning(self) -> bool:
        """Whether its reports are capped by what it has shown (see `room`)."""
        return self.proven is not None and self.proven < self.capacity

    @property
    def room(self) -> int:
        """The clients it may have: what it reports, but while it is earning no more than
        EARNED_BASE plus the sessions it has been seen to carry."""
        if self.proven is None or not self.earning:
            return self.capacity
        return min(self.capacity, EARNED_BASE + self.proven)

    @property
    def taken(self) -> int:
        """Its load as the broker counts it: reported clients plus offers handed since,
        and, while it is earning, at least the offers handed to it within EARNED_WINDOW
        (whatever it reports)."""
        taken = self.clients + self.handed
        return max(taken, len(self.recent)) if self.earning else taken

    @property
    def is_full(self) -> bool:
        return self.taken >= self.room

    @property
    def load(self) -> float:
        return self.taken / self.room


@dataclass(frozen=True, slots=True)
class PollRecord:
    poll_id: int
    volunteer_id: str
    opened: float
    deadline: float


@dataclass(frozen=True, slots=True)
class OfferRecord:
    offer_id: str
    sdp: str
    seq: int  # FIFO position; kept when an offer is given back to the queue
    deadline: float
    poll_id: int | None = None  # the poll it was handed to; None while queued
    volunteer_id: str | None = None
    report: int = 0  # the volunteer's report it was handed under
    nat: NatKind = "unknown"
    relay: bool = False  # the client has a TURN server
    passed_over: bool = False  # free volunteers were there, none it could connect to
    relay_url: str | None = None  # the egress the volunteer relays it to (None: its own)
    network: str = ""  # the client's /24 or /48 ("" unknown)
    #: the volunteer groups its network may use (guard.network_groups); None: any
    groups: frozenset[int] | None = None


class MatchStore(Protocol):
    """Where matchmaking state lives. Records are immutable: change one by putting anew."""

    def get_volunteer(self, volunteer_id: str) -> VolunteerRecord | None: ...
    def put_volunteer(self, record: VolunteerRecord) -> None: ...
    def delete_volunteer(self, volunteer_id: str) -> None: ...
    def count_volunteers(self) -> int: ...
    def count_volunteers_by_nat(self) -> dict[NatKind, int]: ...

    def get_poll(self, poll_id: int) -> PollRecord | None: ...
    def put_poll(self, record: PollRecord) -> None: ...
    def delete_poll(self, poll_id: int) -> None: ...
    def open_polls(self) -> Iterable[PollRecord]: ...
    def count_polls(self) -> int: ...

    def get_offer(self, offer_id: str) -> OfferRecord | None: ...
    def put_offer(self, record: OfferRecord) -> None:
        """Store an offer; it is queued exactly while ``record.poll_id`` is None."""

    def delete_offer(self, offer_id: str) -> None: ...
    def offer_handed_to(self, poll_id: int) -> OfferRecord | None: ...
    def queued_offers(self) -> Iterable[OfferRecord]:
        """Queued offers, oldest (lowest ``seq``) first."""

    def count_queued(self) -> int: ...


class InMemoryMatchStore:
    """A :class:`MatchStore` in dictionaries, for a single broker process."""

    def __init__(self) -> None:
        self._volunteers: dict[str, VolunteerRecord] = {}
        self._polls: dict[int, PollRecord] = {}
        self._offers: dict[str, OfferRecord] = {}
        self._queue: list[tuple[int, str]] = []  # (seq, offer_id), sorted
        self._handed: dict[int, str] = {}  # poll id -> offer id

    def get_volunteer(self, volunteer_id: str) -> VolunteerRecord | None:
        return self._volunteers.get(volunteer_id)

    def put_volunteer(self, record: VolunteerRecord) -> None:
        self._volunteers[record.volunteer_id] = record

    def delete_volunteer(self, volunteer_id: str) -> None:
        self._volunteers.pop(volunteer_id, None)

    def count_volunteers(self) -> int:
        return len(self._volunteers)

    def count_volunteers_by_nat(self) -> dict[NatKind, int]:
        counts = dict.fromkeys(NAT_KINDS, 0)
        for volunteer in self._volunteers.values():
            counts[volunteer.nat] += 1
        return counts

    def get_poll(self, poll_id: int) -> PollRecord | None:
        return self._polls.get(poll_id)

    def put_poll(self, record: PollRecord) -> None:
        self._polls[record.poll_id] = record

    def delete_poll(self, poll_id: int) -> None:
        self._polls.pop(poll_id, None)

    def open_polls(self) -> Iterator[PollRecord]:
        return iter(list(self._polls.values()))

    def count_polls(self) -> int:
        return len(self._polls)

    def get_offer(self, offer_id: str) -> OfferRecord | None:
        return self._offers.get(offer_id)

    def put_offer(self, record: OfferRecord) -> None:
        self._unindex(record.offer_id)
        self._offers[record.offer_id] = record
        if record.poll_id is None:
            bisect.insort(self._queue, (record.seq, record.offer_id))
        else:
            self._handed[record.poll_id] = record.offer_id

    def delete_offer(self, offer_id: str) -> None:
        self._unindex(offer_id)
        self._offers.pop(offer_id, None)

    def offer_handed_to(self, poll_id: int) -> OfferRecord | None:
        offer_id = self._handed.get(poll_id)
        return None if offer_id is None else self._offers.get(offer_id)

    def queued_offers(self) -> Iterator[OfferRecord]:
        return iter([self._offers[offer_id] for _, offer_id in self._queue])

    def count_queued(self) -> int:
        return len(self._queue)

    def _unindex(self, offer_id: str) -> None:
        old = self._offers.get(offer_id)
        if old is None:
            return
        if old.poll_id is None:
            key = (old.seq, old.offer_id)
            i = bisect.bisect_left(self._queue, key)
            if i < len(self._queue) and self._queue[i] == key:
                del self._queue[i]
        else:
            self._handed.pop(old.poll_id, None)


# -- the matching rule ----------------------------------------------------------------------


def can_serve(offer: OfferRecord, volunteer: VolunteerRecord) -> bool:
    """Whether the offer's client can connect to this volunteer (directly or relayed)."""
    return offer.relay or volunteer.relay or can_connect(offer.nat, volunteer.nat)


def pick_volunteer(
    offer: OfferRecord, free: Iterable[tuple[PollRecord, VolunteerRecord]]
) -> tuple[PollRecord, VolunteerRecord] | None:
    """The open poll to hand ``offer`` to, among ``free`` (polls of volunteers with room).

    Only volunteers the client can connect to; of those the most restrictive NAT first (a
    relay counts as the most open of all), then the least loaded, then the longest waiting.
    """
    best: tuple[int, float, float, int] | None = None
    chosen: tuple[PollRecord, VolunteerRecord] | None = None
    for poll, volunteer in free:
        if not can_serve(offer, volunteer):
            continue
        restrictive = -1 if volunteer.relay else RESTRICTIVENESS[volunteer.nat]
        rank = (-restrictive, volunteer.load, poll.opened, poll.poll_id)
        if best is None or rank < best:
            best, chosen = rank, (poll, volunteer)
    return chosen


# -- the matchmaker -------------------------------------------------------------------------

_TimerKind = Literal["poll", "offer", "volunteer"]
_Bucket = tuple[bool, NatKind, int]  # (relay, NAT kind, group) of a volunteer
_HeapKey = tuple[bool, NatKind, int | None]

#: A volunteer that has not yet been seen carrying sessions may have this many clients, and
#: one more per client network the egress has seen it carry a session for, up to its
#: capacity ...
EARNED_BASE = 1
#: ... counting every offer handed to it within this many seconds; and all the new
#: volunteers of one network together get at most this many offers in that window.
EARNED_WINDOW = 60.0
NEWCOMERS_PER_NETWORK = 4
#: At most this many free polls of one heap are passed over (their network has had its
#: share, or its newcomers theirs) in looking for a volunteer.
MAX_PASSED = 64  # a bucket, or (relay, NAT kind, None): any group


def random_offer_id() -> str:
    """128 random bits, base64url: an offer id nobody can guess."""
    return secrets.token_urlsafe(16)


class Matchmaker:
    """Pairs client offers with polling volunteers; see the module docstring for the rules."""

    def __init__(
        self,
        config: MatchmakerConfig | None = None,
        *,
        store: MatchStore | None = None,
        new_offer_id: Callable[[], str] = random_offer_id,
    ) -> None:
        self.config = config or MatchmakerConfig()
        self._store: MatchStore = store if store is not None else InMemoryMatchStore()
        self._new_offer_id = new_offer_id
        self._events: deque[Event] = deque()
        self._timers: list[tuple[float, int, _TimerKind, str]] = []
        # Open polls of volunteers with room, by (relay, NAT kind): a heap each, ordered as
        # pick_volunteer ranks within one kind, with stale entries skipped (and compacted)
        # lazily. Picking looks at the top of each of these few heaps, so a poll or an offer
        # costs O(log N) whatever N volunteers poll, not a scan of every open poll.
        self._free: dict[_HeapKey, list[tuple[float, float, int]]] = {}
        self._free_bucket: dict[int, _Bucket] = {}
        self._free_live: dict[_HeapKey, int] = {}
        self._kinds: set[tuple[bool, NatKind]] = set()  # (relay, NAT) with a heap
        self._next_poll_id = 1
        self._next_seq = 1
        self._shares = NetworkShares()
        self._networks: Counter[str] = Counter()  # volunteers known, by network
        #: when offers went to volunteers not yet seen carrying anyone, by their network
        self._newcomer_offers: dict[str, deque[float]] = {}

    # -- inputs ---------------------------------------------------------------------------

    def receive_poll(
        self, poll: VolunteerPoll, now: float, network: str = "", proven: int | None = None
    ) -> int:
        """A volunteer polls (from `network`) and reports its load; returns the poll's id.

        `proven`: client networks the egress has seen it carry sessions for, when the
        broker keeps that record (then a volunteer earns its room: see
        VolunteerRecord.room); None: no record."""
        store = self._store
        poll_id = self._next_poll_id
        self._next_poll_id += 1
        old = store.get_volunteer(poll.volunteer_id)
        if old is not None and old.poll_id is not None:
            store.delete_poll(old.poll_id)
            self._unindex_poll(old.poll_id)
            self._events.append(PollReleased(old.poll_id, "superseded"))
        volunteer = VolunteerRecord(
            volunteer_id=poll.volunteer_id,
            kind=poll.kind,
            capacity=poll.capacity,
            clients=poll.clients,
            handed=0,
            report=(old.report + 1) if old is not None else 1,
            last_seen=now,
            poll_id=poll_id,
            nat=poll.nat,
            relay=poll.relay,
            network=network,
            group=volunteer_group(poll.volunteer_id),
            proven=proven,
            recent=tuple(t for t in old.recent if t > now - EARNED_WINDOW) if old else (),
        )
        if old is None or old.network != network:
            if old is not None:
                self._count_network(old.network, -1)
            self._count_network(network, +1)
        store.put_volunteer(volunteer)
        deadline = now + self.config.poll_timeout
        record = PollRecord(poll_id, poll.volunteer_id, now, deadline)
        store.put_poll(record)
        self._index_poll(record, volunteer)
        self._add_timer(deadline, "poll", str(poll_id))
        self._match(now)
        return poll_id

    def receive_offer(
        self,
        offer: ClientOffer,
        now: float,
        *,
        offer_id: str | None = None,
        deadline: float | None = None,
        relay_url: str | None = None,
        network: str = "",
        groups: frozenset[int] | None = None,
    ) -> str:
        """A client offers; returns the offer's id. The offer waits in the queue if need be.

        An offer another broker received (through the shared pool) keeps its id and its
        deadline. ``relay_url`` travels with the offer to the volunteer it is handed to.
        ``network`` is the client's; ``groups`` the volunteer groups that network may use
        (applied once the pool has ``guard.GROUPS_MIN_POOL`` volunteers)."""
        if offer_id is None:
            offer_id = self._new_offer_id()
            while self._store.get_offer(offer_id) is not None:
                offer_id = self._new_offer_id()
        if deadline is None:
            deadline = now + self.config.answer_timeout
        self._store.put_offer(
            OfferRecord(
                offer_id,
                offer.sdp,
                self._next_seq,
                deadline,
                nat=offer.nat,
                relay=offer.relay,
                relay_url=relay_url,
                network=network,
                groups=groups,
            )
        )
        self._next_seq += 1
        self._add_timer(deadline, "offer", offer_id)
        self._match(now)
        return offer_id

    def receive_answer(self, answer: VolunteerAnswer, now: float) -> bool:
        """A volunteer answers an offer; False if it names no offer handed to it."""
        offer = self._store.get_offer(answer.offer_id)
        if offer is None or offer.volunteer_id != answer.volunteer_id:
            return False
        self._store.delete_offer(offer.offer_id)
        volunteer = self._store.get_volunteer(answer.volunteer_id)
        if volunteer is not None and volunteer.poll_id is None:
            self._touch(volunteer, now)
        self._events.append(OfferAnswered(offer.offer_id, answer.volunteer_id, answer.sdp))
        return True

    def abandon_poll(self, poll_id: int, now: float) -> None:
        """The poll's request is gone (the volunteer hung up, or sending it failed).

        An open poll is closed. An offer handed to it that has not been answered goes back to
        its place in the queue and is matched again. Calling this twice does no harm.
        """
        store = self._store
        poll = store.get_poll(poll_id)
        if poll is not None:
            store.delete_poll(poll_id)
            self._unindex_poll(poll_id)
            volunteer = store.get_volunteer(poll.volunteer_id)
            if volunteer is not None and volunteer.poll_id == poll_id:
                self._touch(replace(volunteer, poll_id=None), now)
            return
        offer = store.offer_handed_to(poll_id)
        if offer is None:
            return
        assert offer.volunteer_id is not None
        volunteer = store.get_volunteer(offer.volunteer_id)
        if volunteer is not None and volunteer.report == offer.report and volunteer.handed > 0:
            store.put_volunteer(replace(volunteer, handed=volunteer.handed - 1))
        store.put_offer(replace(offer, poll_id=None, volunteer_id=None, report=0))
        self._match(now)

    def take_queued(self) -> list[OfferRecord]:
        """Remove every queued offer (none handed out) and return them, oldest first: a
        broker sharing a pool publishes what its own volunteers could not take."""
        queued = list(self._store.queued_offers())
        for offer in queued:
            self._store.delete_offer(offer.offer_id)
        return queued

    def can_place(
        self,
        nat: NatKind,
        relay: bool,
        network: str = "",
        groups: frozenset[int] | None = None,
        now: float = 0.0,
    ) -> bool:
        """Whether an offer of this kind would be handed to a volunteer at once."""
        probe = OfferRecord("", "", 0, 0.0, nat=nat, relay=relay, network=network, groups=groups)
        return self._free_bucket != {} and self._pick(probe, now) is not None

    def offer_deadline(self, offer_id: str) -> float | None:
        offer = self._store.get_offer(offer_id)
        return None if offer is None else offer.deadline

    def offer_network(self, offer_id: str) -> str | None:
        """The client network of an offer still here ("" unknown), or None."""
        offer = self._store.get_offer(offer_id)
        return None if offer is None else offer.network

    @property
    def has_free_polls(self) -> bool:
        """Some volunteer with room is polling (stale entries aside)."""
        return bool(self._free_bucket)

    def abandon_offer(self, offer_id: str, now: float) -> None:
        """The client gave up on its offer: drop it (a later answer gets unknown_offer)."""
        self._store.delete_offer(offer_id)

    def handle_timer(self, now: float) -> None:
        """Expire polls, offers and volunteers whose time has come."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, key = heapq.heappop(timers)
            if kind == "poll":
                self._expire_poll(int(key), now)
            elif kind == "offer":
                self._expire_offer(key, now)
            else:
                self._expire_volunteer(key, now)

    # -- outputs --------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        """The next decision to carry out, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called, or None if nothing is pending."""
        timers = self._timers
        while timers and not self._timer_is_live(timers[0]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    @property
    def volunteer_count(self) -> int:
        """Volunteers seen within volunteer_ttl."""
        return self._store.count_volunteers()

    def volunteers_by_nat(self) -> dict[NatKind, int]:
        """Volunteers seen within volunteer_ttl, by the NAT kind they reported."""
        return self._store.count_volunteers_by_nat()

    def polls_from(self, volunteer_id: str) -> int:
        """How many polls a volunteer has made here since it was last forgotten (0: none)."""
        record = self._store.get_volunteer(volunteer_id)
        return record.report if record is not None else 0

    @property
    def open_poll_count(self) -> int:
        return self._store.count_polls()

    @property
    def waiting_offer_count(self) -> int:
        """Offers queued for a volunteer (not counting those handed out, awaiting answers)."""
        return self._store.count_queued()

    # -- internals ------------------------------------------------------------------------

    def _match(self, now: float) -> None:
        store = self._store
        if not self._free_bucket:
            return  # no volunteer with room is polling: nothing to hand, whatever waits
        for offer in store.queued_offers():
            if not self._free_bucket:
                return
            pick = self._pick(offer, now)
            if pick is None:
                # Passed over: free volunteers, none it can connect to (not merely none of
                # its network's groups, which is no reason to tell it to get a TURN server).
                nat_bound = (
                    offer.groups is None or self._pick(replace(offer, groups=None), now) is None
                )
                if nat_bound and not offer.passed_over:
                    store.put_offer(replace(offer, passed_over=True))
                continue
            poll, volunteer = pick
            self._hand(offer, volunteer, poll.poll_id, now)

    def _newcomers_spent(self, volunteer: VolunteerRecord, now: float) -> bool:
        """Whether `volunteer` is new (earning, nothing carried yet) and its network's new
        volunteers together had their offers for the window: fresh ids do not buy more."""
        if volunteer.proven != 0:
            return False
        times = self._newcomer_offers.get(volunteer.network)
        if times is None:
            return False
        while times and times[0] <= now - EARNED_WINDOW:
            times.popleft()
        if not times:
            del self._newcomer_offers[volunteer.network]
            return False
        return len(times) >= NEWCOMERS_PER_NETWORK

    def _count_network(self, network: str, delta: int) -> None:
        count = self._networks[network] + delta
        if count > 0:
            self._networks[network] = count
        else:
            self._networks.pop(network, None)

    def _index_poll(self, poll: PollRecord, volunteer: VolunteerRecord) -> None:
        if volunteer.is_full:
            return  # never handed an offer until it reports room in a new poll
        bucket = (volunteer.relay, volunteer.nat, volunteer.group)
        self._free_bucket[poll.poll_id] = bucket
        self._kinds.add((volunteer.relay, volunteer.nat))
        entry = (volunteer.load, poll.opened, poll.poll_id)
        # Each free poll is in two heaps: its kind's, and its kind's within its group (for
        # the offers of client networks that may use only some groups).
        for key in ((volunteer.relay, volunteer.nat, None), bucket):
            heap = self._free.setdefault(key, [])
            heapq.heappush(heap, entry)
            live = self._free_live[key] = self._free_live.get(key, 0) + 1
            if len(heap) > 2 * live + 64:  # mostly stale entries: keep memory in proportion
                heap[:] = [e for e in heap if self._in_heap(e[2], key)]
                heapq.heapify(heap)

    def _in_heap(self, poll_id: int, key: _HeapKey) -> bool:
        bucket = self._free_bucket.get(poll_id)
        return bucket is not None and bucket[:2] == key[:2] and key[2] in (None, bucket[2])

    def _unindex_poll(self, poll_id: int) -> None:
        bucket = self._free_bucket.pop(poll_id, None)
        if bucket is not None:
            self._free_live[(bucket[0], bucket[1], None)] -= 1
            self._free_live[bucket] -= 1

    def _pick(self, offer: OfferRecord, now: float) -> tuple[PollRecord, VolunteerRecord] | None:
        """pick_volunteer's choice, from the top of each kind's heap, within the harvest
        guard: only the groups the client's network may use (in a pool big enough to
        split), and a volunteer of a network that has had more than its share only if no
        other can serve."""
        guard = self.config.guard
        groups = offer.groups
        if not guard or groups is None or self._store.count_volunteers() < GROUPS_MIN_POOL:
            groups = None
        networks = len(self._networks)
        Rank = tuple[int, float, float, int]
        best: Rank | None = None  # among volunteers of networks within their share
        chosen: tuple[PollRecord, VolunteerRecord] | None = None
        best_over: Rank | None = None  # among the others: the fallback
        chosen_over: tuple[PollRecord, VolunteerRecord] | None = None
        skipped: list[tuple[list[tuple[float, float, int]], tuple[float, float, int]]] = []
        keys = [
            (relay, nat, group)
            for relay, nat in self._kinds
            if offer.relay or relay or can_connect(offer.nat, nat)
            for group in (groups if groups is not None else (None,))
        ]
        for key in keys:
            heap = self._free.get(key)
            if not heap:
                continue
            relay, nat, _ = key
            restrictive = -1 if relay else RESTRICTIVENESS[nat]
            passed = 0
            while heap:
                _, _, poll_id = heap[0]
                poll = self._store.get_poll(poll_id) if self._in_heap(poll_id, key) else None
                volunteer = self._store.get_volunteer(poll.volunteer_id) if poll else None
                if poll is None or volunteer is None or volunteer.is_full:
                    heapq.heappop(heap)  # stale: gone, or no longer free
                    if poll is not None:
                        self._unindex_poll(poll_id)
                    continue
                rank = (-restrictive, volunteer.load, poll.opened, poll.poll_id)
                if self._newcomers_spent(volunteer, now):
                    skipped.append((heap, heapq.heappop(heap)))  # put back below
                    passed += 1
                    if passed >= MAX_PASSED:
                        break
                    continue
                if guard and self._shares.over(volunteer.network, networks, now):
                    if best_over is None or rank < best_over:
                        best_over, chosen_over = rank, (poll, volunteer)
                    skipped.append((heap, heapq.heappop(heap)))  # put back below
                    passed += 1
                    if passed >= MAX_PASSED:
                        break  # a network with thousands of polls costs no more than this
                    continue
                if best is None or rank < best:
                    best, chosen = rank, (poll, volunteer)
                break
        for heap, entry in skipped:
            heapq.heappush(heap, entry)
        if chosen is None:
            return chosen_over
        return chosen

    def _hand(
        self, offer: OfferRecord, volunteer: VolunteerRecord, poll_id: int, now: float
    ) -> None:
        store = self._store
        store.delete_poll(poll_id)
        self._unindex_poll(poll_id)
        self._shares.add(volunteer.network, now)
        if volunteer.proven == 0:
            self._newcomer_offers.setdefault(volunteer.network, deque()).append(now)
        recent = volunteer.recent
        if volunteer.earning:
            recent = (*(t for t in recent if t > now - EARNED_WINDOW), now)
        volunteer = replace(volunteer, handed=volunteer.handed + 1, poll_id=None, recent=recent)
        self._touch(volunteer, now)
        store.put_offer(
            replace(
                offer,
                poll_id=poll_id,
                volunteer_id=volunteer.volunteer_id,
                report=volunteer.report,
            )
        )
        self._events.append(
            OfferAssigned(
                poll_id, volunteer.volunteer_id, offer.offer_id, offer.sdp, offer.relay_url
            )
        )

    def _touch(self, volunteer: VolunteerRecord, now: float) -> None:
        """Save a volunteer with no open poll, seen now, and start its ttl."""
        volunteer = replace(volunteer, last_seen=max(volunteer.last_seen, now))
        self._store.put_volunteer(volunteer)
        self._add_timer(
            volunteer.last_seen + self.config.volunteer_ttl, "volunteer", volunteer.volunteer_id
        )

    def _expire_poll(self, poll_id: int, now: float) -> None:
        poll = self._store.get_poll(poll_id)
        if poll is None or poll.deadline > now:
            return
        self.abandon_poll(poll_id, now)
        self._events.append(PollReleased(poll_id, "timeout"))

    def _expire_offer(self, offer_id: str, now: float) -> None:
        offer = self._store.get_offer(offer_id)
        if offer is None or offer.deadline > now:
            return
        self._store.delete_offer(offer_id)
        handed = offer.poll_id is not None
        incompatible = not handed and offer.passed_over
        self._events.append(OfferExpired(offer_id, handed=handed, incompatible=incompatible))

    def _expire_volunteer(self, volunteer_id: str, now: float) -> None:
        volunteer = self._store.get_volunteer(volunteer_id)
        if volunteer is None or volunteer.poll_id is not None:
            return
        if volunteer.last_seen + self.config.volunteer_ttl > now:
            return
        self._store.delete_volunteer(volunteer_id)
        self._count_network(volunteer.network, -1)
        self._events.append(VolunteerForgotten(volunteer_id))

    def _add_timer(self, deadline: float, kind: _TimerKind, key: str) -> None:
        heapq.heappush(self._timers, (deadline, self._next_seq, kind, key))
        self._next_seq += 1

    def _timer_is_live(self, timer: tuple[float, int, _TimerKind, str]) -> bool:
        deadline, _, kind, key = timer
        if kind == "poll":
            return self._store.get_poll(int(key)) is not None
        if kind == "offer":
            return self._store.get_offer(key) is not None
        volunteer = self._store.get_volunteer(key)
        return (
            volunteer is not None
            and volunteer.poll_id is None
            and volunteer.last_seen + self.config.volunteer_ttl == deadline
        )
