"""The broker's matchmaking cost with many volunteers polling (issue 11, row 3).

    .venv/bin/python benchmarks/matchmaking.py [--volunteers N] [--runs R] [--json PATH]

The sans-IO matchmaker, driven as the broker drives it, no sockets:
- `full_poll_us`: a volunteer that reports itself full polls, while an offer waits that
  nobody can take (the attack: before, each such poll scanned every open poll);
- `offer_us`: a client's offer is handed to one of N free volunteers of mixed NAT kinds;
- `poll_us`: a free volunteer polls with nothing waiting;
- `offer_guarded_us`: as `offer_us`, with every volunteer in a /24 of its own and offers
  from client networks limited to two groups of sixteen (the harvest guard).
Microseconds per operation; the median and spread of R runs are printed and written.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from unwall.broker.guard import network_groups
from unwall.broker.matchmaker import Matchmaker
from unwall.wire.broker import ClientOffer, VolunteerPoll
from unwall.wire.nat import NAT_KINDS


def _poll(i: int, clients: int) -> VolunteerPoll:
    nat = NAT_KINDS[i % len(NAT_KINDS)]
    return VolunteerPoll(f"v{i}", capacity=4, clients=clients, kind="headless", nat=nat)


def one_run(volunteers: int) -> dict[str, float]:
    matchmaker = Matchmaker()
    matchmaker.receive_offer(ClientOffer("waiting", nat="symmetric"), now=0.0)
    started = time.perf_counter()
    for i in range(volunteers):
        matchmaker.receive_poll(_poll(i, clients=4), now=1.0)
    full_poll = (time.perf_counter() - started) / volunteers

    matchmaker = Matchmaker()
    started = time.perf_counter()
    for i in range(volunteers):
        matchmaker.receive_poll(_poll(i, clients=i % 3), now=1.0)
    free_poll = (time.perf_counter() - started) / volunteers
    offers = min(1000, volunteers)
    started = time.perf_counter()
    for n in range(offers):
        matchmaker.receive_offer(ClientOffer(f"offer {n}"), now=2.0)
    offer = (time.perf_counter() - started) / offers

    # The harvest guard at work: every volunteer in a /24 of its own, offers from client
    # networks that may use two groups of sixteen.
    matchmaker = Matchmaker()
    for i in range(volunteers):
        network = f"10.{i // 256 % 256}.{i % 256}.0/24"
        matchmaker.receive_poll(_poll(i, clients=i % 3), now=1.0, network=network)
    started = time.perf_counter()
    for n in range(offers):
        network = f"198.51.{n % 256}.0/24"
        groups = network_groups(network, 0.0)
        matchmaker.receive_offer(ClientOffer(f"offer {n}"), 2.0, network=network, groups=groups)
    guarded = (time.perf_counter() - started) / offers
    return {
        "full_poll_us": full_poll * 1e6,
        "poll_us": free_poll * 1e6,
        "offer_us": offer * 1e6,
        "offer_guarded_us": guarded * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volunteers", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = [one_run(args.volunteers) for _ in range(args.runs)]
    summary: dict[str, object] = {"volunteers": args.volunteers, "runs": args.runs}
    for figure in runs[0]:
        values = [run[figure] for run in runs]
        summary[figure] = {
            "median": round(statistics.median(values), 2),
            "min": round(min(values), 2),
            "max": round(max(values), 2),
        }
        print(
            f"{figure:>16}: {statistics.median(values):8.2f} us median "
            f"({min(values):.2f}-{max(values):.2f}) over {args.runs} runs, "
            f"{args.volunteers} volunteers"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
