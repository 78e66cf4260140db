"""`unwall lab up | down | run | report`: build the lab, tear it down, use it, read its log.

State lives in /run/unwall-lab (UNWALL_LAB_STATE overrides): the processes started, the
profile in force, the egress key, the lab CA, and the box's log (flows.db), which outlives
`lab down` so the report can still be read.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unwall.broker.coturn import allowed_peers, instance_config, write_config
from unwall.lab import topology
from unwall.lab.box import box_rules, throttle_commands
from unwall.lab.delayline import emulator_rules, read_link_state, write_link_state
from unwall.lab.link import LinkSpec, preset
from unwall.lab.profile import CensorProfile
from unwall.lab.topology import BOX, INTERNET, LabAddresses, LabError
from unwall.wire import sealed
from unwall.wire.bridgeline import BridgeLine

BROKER_PORT = 8080
EGRESS_PORT = 7000
#: Where the lab's TURN server may relay: the lab's own networks (TEST-NET addresses).
LAB_PEERS = (topology.INTERNET_NET, topology.CENSORED_NET, topology.HOMES_NET)


def state_dir() -> Path:
    return Path(os.environ.get("UNWALL_LAB_STATE", "/run/unwall-lab"))


def _start(
    name: str, namespace: str, argv: list[str], state: Path, env: dict[str, str] | None = None
) -> int:
    log = (state / f"{name}.log").open("ab")
    process = subprocess.Popen(
        ["ip", "netns", "exec", namespace, *argv],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        env={**os.environ, **env} if env else None,
    )
    log.close()
    pids_path = state / "pids.json"
    pids = json.loads(pids_path.read_text()) if pids_path.exists() else {}
    pids[name] = process.pid
    pids_path.write_text(json.dumps(pids))
    return process.pid


def _secret(path: Path) -> str:
    """A random secret kept in `path` (mode 0600), made on first use."""
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _unwall(*args: str) -> list[str]:
    return [sys.executable, "-m", "unwall", *args]


def _wait_for(check: Any, what: str, state: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise LabError(f"{what} did not come up in {timeout:.0f} s; see the logs in {state}")


def _port_open(namespace: str, address: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(('{address}', {port}), timeout=1)"
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", probe],
        capture_output=True,
        timeout=10,
    )
    return result.returncode == 0


def up(
    profile_path: Path | None = None,
    link: str | None = None,
    homes: Sequence[str] = (),
    client_nat: str = "port-restricted",
    volunteers: bool = True,
    volunteer_turn: bool = True,
    broker_stun: bool = True,
    volunteer_extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Build the lab. `link` names a preset that replaces the profile's `[link]`; `homes`
    gives the NAT kind of each home network (home1, home2, ...), each with a headless
    volunteer unless `volunteers` is False (then none runs, not even the internet's own);
    `client_nat` is the NAT the box puts in front of the censored network;
    `volunteer_turn` makes the broker hand volunteers TURN credentials, `broker_stun` gives
    browser volunteers the lab's STUN server (without it they offer only mDNS names);
    `volunteer_extra` goes on each headless volunteer's command line."""
    reason = topology.lab_possible()
    if reason is not None:
        raise LabError(reason)
    down(quiet=True)
    state = state_dir()
    state.mkdir(parents=True, exist_ok=True)
    for stale in (
        "flows.db",
        "flows.db-wal",
        "flows.db-shm",
        "pids.json",
        "internet.ready",
        "link.ready",
        "link-stats.json",
    ):
        (state / stale).unlink(missing_ok=True)
    profile = CensorProfile.load(profile_path) if profile_path else CensorProfile()
    if profile_path is not None:
        shutil.copy(profile_path, state / "profile.toml")
    else:
        (state / "profile.toml").write_text("# no blocking: the box only logs\n")
    link_spec = preset(link) if link is not None else profile.link
    write_link_state(state / "link.json", link_spec)
    addresses = LabAddresses()
    home_list = tuple(
        topology.Home(index, topology.parse_nat_kind(kind)) for index, kind in enumerate(homes, 1)
    )
    topology.build(addresses, home_list, topology.parse_nat_kind(client_nat))
    for rule in box_rules(profile) + throttle_commands(profile):
        topology.run(*rule, namespace=BOX)
    _start("box", BOX, _unwall("lab", "_box", "--state", str(state)), state)
    _start("link", BOX, _unwall("lab", "_link", "--state", str(state)), state)
    _wait_for(lambda: (state / "link.ready").exists(), "the link emulator", state)
    if not link_spec.is_perfect:
        for rule in emulator_rules():
            topology.run(*rule, namespace=BOX)
    _start("internet", INTERNET, _unwall("lab", "_internet", "--state", str(state)), state)
    _wait_for(lambda: (state / "internet.ready").exists(), "the lab's web sites", state)
    stun_url, turn = _start_stun_turn(addresses, state)
    from unwall.egress.identity import generate_identity, load_identity, save_identity

    keys = state / "egress-keys"
    if not (keys / "egress-key.pem").exists():
        save_identity(generate_identity(), keys)
    pin = load_identity(keys).pin
    broker_url = f"http://broker.test:{BROKER_PORT}"
    egress_url = f"ws://{addresses.egress}:{EGRESS_PORT}/v1/relay"
    # The secret broker and egress share (tickets, reports): in their environment, never
    # on a command line.
    secret = {"UNWALL_REPORT_SECRET": _secret(state / "report-secret")}
    broker_key = sealed.public_key_text(secret["UNWALL_REPORT_SECRET"])
    _start("egress", INTERNET, _unwall(
        "egress", "--listen", f"{addresses.egress}:{EGRESS_PORT}", "--key-dir", str(keys),
        "--allow", topology.INTERNET_NET,
        # the broker: reports, and the requests clients send inside their tunnels (plain
        # HTTP inside the lab's internet, which carries a signature, never the secret)
        "--report-to", f"http://{addresses.broker}:{BROKER_PORT}/", "--report-over-http",
    ), state, secret)  # fmt: skip
    _start("broker", INTERNET, _unwall(
        "broker", "--listen", f"{addresses.broker}:{BROKER_PORT}", "--egress-url", egress_url,
        *(["--ice-server", stun_url] if broker_stun else []),
        *(_turn_args(turn) if volunteer_turn else []),
    ), state, {**secret, **(_turn_env(turn) if volunteer_turn else {})})  # fmt: skip
    _wait_for(lambda: _port_open(INTERNET, addresses.broker, BROKER_PORT), "the broker", state)
    _wait_for(lambda: _port_open(INTERNET, addresses.egress, EGRESS_PORT), "the egress", state)
    if volunteers:
        start_volunteer(None, stun_url, state, volunteer_extra)
        for home in home_list:
            start_volunteer(home, stun_url, state, volunteer_extra)
    info = {
        "state": str(state),
        "profile": profile.source,
        "bridge_line": BridgeLine(broker_url, pin, broker_key=broker_key, ice=(stun_url,)).format(),
        "bridge_line_fronted": BridgeLine(
            broker_url, pin, ("https://cdn.test/",), broker_key, (stun_url,)
        ).format(),
        "censored_host": topology.CENSORED_IP,
        "lab_ca": str(state / "pki" / "lab-ca.pem"),
        "stun": stun_url,
        "stun_alt": f"stun:{addresses.stun_alt}:3478",
        "turn": turn,
        "link": link_spec.describe(),
        "client_nat": client_nat,
        "homes": [
            {
                "name": f"home{h.index}",
                "nat": h.nat,
                "router": h.router,
                "host": h.host,
                "host_ip": h.host_ip,
                "wan_ip": h.wan_ip,
            }
            for h in home_list
        ],
    }
    (state / "lab.json").write_text(json.dumps(info, indent=2))
    return info


def _start_stun_turn(addresses: LabAddresses, state: Path) -> tuple[str, dict[str, Any]]:
    """Debian's coturn, twice: a STUN server on two addresses (so that RFC 5780 NAT
    discovery works: OTHER-ADDRESS and CHANGE-REQUEST) and a TURN server with TURN over
    UDP and TCP on 3478 and over TLS on 443, whose credentials are derived from a secret
    it shares with the broker (coturn's `use-auth-secret`, the TURN REST API scheme)."""
    stun_config = write_config(state / "stun.conf", instance_config([
        "stun-only", "no-tls", "no-dtls",
        f"listening-ip={addresses.stun}", f"listening-ip={addresses.stun_alt}",
        "listening-port=3478", "alt-listening-port=3479",
        f"pidfile={state / 'stun.pid'}", f"userdb={state / 'stun.db'}", "log-file=stdout",
    ]))  # fmt: skip
    _start("stun", INTERNET, ["turnserver", "-c", str(stun_config)], state)
    secret_path = state / "turn-secret"
    if not secret_path.exists():
        secret_path.write_text(secrets.token_hex(24))
        secret_path.chmod(0o600)
    secret = secret_path.read_text().strip()
    config = turn_config(addresses, state, secret)
    _start("turn", INTERNET, ["turnserver", "-c", str(config)], state)
    _wait_for(lambda: _udp_bound(INTERNET, f"{addresses.stun_alt}:3478"), "STUN", state)
    _wait_for(lambda: _port_open(INTERNET, addresses.turn, 443), "TURN", state)
    turn = {
        "secret": secret,
        "urls": [
            f"turn:{addresses.turn}:3478",
            f"turn:{addresses.turn}:3478?transport=tcp",
            "turns:turn.test:443?transport=tcp",
        ],
    }
    return f"stun:{addresses.stun}:3478", turn


def turn_config(addresses: LabAddresses, state: Path, secret: str) -> Path:
    """The TURN server's configuration: the one unwall ships (unwall.broker.coturn), on the
    lab's address, with the secret (in a file of mode 600, never on coturn's command line),
    and relaying to the lab's own networks, TEST-NET ranges that it denies as any TURN server
    on the internet must, and to nothing else special."""
    pki = state / "pki"
    return write_config(state / "turn.conf", instance_config([
        "no-dtls", "no-rfc5780", "realm=unwall.test", f"static-auth-secret={secret}",
        f"listening-ip={addresses.turn}", f"relay-ip={addresses.turn}",
        "listening-port=3478", "tls-listening-port=443",
        f"cert={pki / 'site-cert.pem'}", f"pkey={pki / 'site-key.pem'}",
        *allowed_peers(LAB_PEERS),
        f"pidfile={state / 'turn.pid'}", f"userdb={state / 'turn.db'}", "log-file=stdout",
    ]))  # fmt: skip


def _turn_args(turn: dict[str, Any]) -> list[str]:
    args = []
    for url in turn["urls"]:
        args += ["--turn-url", url]
    return args


def _turn_env(turn: dict[str, Any]) -> dict[str, str]:
    """The broker's TURN secret, in its environment (never on a command line)."""
    return {"UNWALL_TURN_SECRET": turn["secret"]}


def client_turn_credentials(ttl: float = 3600.0) -> tuple[str, str]:
    """A username and password for the lab's TURN server, as the broker would mint them
    (coturn's REST API scheme, from the secret the lab shares with coturn)."""
    from unwall.broker.turn import TurnIssuer

    secret = (state_dir() / "turn-secret").read_text().strip()
    issued = TurnIssuer(secret, ("turn:turn.test:3478",), ttl).issue(time.time())
    return issued.username, issued.credential


def _udp_bound(namespace: str, local: str) -> bool:
    out = topology.run("ss", "-Hlun", namespace=namespace, check=False)
    return any(len(line.split()) > 3 and line.split()[3] == local for line in out.splitlines())


def start_volunteer(
    home: topology.Home | None, stun_url: str | None, state: Path, extra: Sequence[str] = ()
) -> int:
    """A headless volunteer in a home (or, with None, on the internet's own address)."""
    addresses = LabAddresses()
    namespace = home.host if home is not None else INTERNET
    address = home.host_ip if home is not None else addresses.volunteers
    name = f"volunteer-home{home.index}" if home is not None else "volunteer"
    stun_args = ["--ice-server", stun_url] if stun_url else []
    return _start(name, namespace, _unwall(
        "volunteer", "--broker", f"http://{addresses.broker}:{BROKER_PORT}",
        "--egress", f"ws://{addresses.egress}:{EGRESS_PORT}/v1/relay",
        "--host-address", address, *stun_args, *extra,
    ), state)  # fmt: skip


def _gone(pid: int) -> bool:
    """True once the process `pid` has exited (a child of ours is reaped here)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def stop(name: str, grace: float = 5.0) -> None:
    """Stop one process the lab started, if it runs, and return once it has exited:
    SIGTERM to its process group, SIGKILL to the group after `grace` seconds. A volunteer
    that still polled the broker while it shut down could be handed the next client's
    offer and answer it as it died."""
    pids_path = state_dir() / "pids.json"
    pids = json.loads(pids_path.read_text()) if pids_path.exists() else {}
    pid = pids.pop(name, None)
    if pid is None:
        return
    pids_path.write_text(json.dumps(pids))
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    killed = False
    while not _gone(pid):
        if time.monotonic() > deadline:
            if killed:
                return  # not even SIGKILL ended it (stuck in the kernel): stop waiting
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            killed, deadline = True, time.monotonic() + grace
        time.sleep(0.05)


def set_link(spec: LinkSpec) -> str:
    """Change the running lab's link (held packets keep their due times)."""
    state = state_dir()
    if BOX not in topology.namespaces_up() or not (state / "link.ready").exists():
        raise LabError("the lab is not up: run `unwall lab up` first")
    old = read_link_state(state / "link.json")
    write_link_state(state / "link.json", spec)
    pid = int((state / "link.ready").read_text())
    os.kill(pid, signal.SIGHUP)
    if old.is_perfect != spec.is_perfect:
        for rule in emulator_rules(add=not spec.is_perfect):
            topology.run(*rule, namespace=BOX)
    return spec.describe()


def link_stats() -> dict[str, Any]:
    """The emulator's counters (packets, bytes, lost, queue drops per direction)."""
    path = state_dir() / "link-stats.json"
    if not path.exists():
        raise LabError("no link statistics yet: is the lab up?")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def probe_path(count: int = 10_000, rate: float = 2000.0) -> dict[str, Any]:
    """RTT and loss per direction between the censored host and the internet, measured
    with UDP probes to the lab's echo server (see `unwall.lab.probe`)."""
    if topology.CENSORED not in topology.namespaces_up():
        raise LabError("the lab is not up: run `unwall lab up` first")
    argv = [*_unwall("lab", "_probe", "--count", str(count), "--rate", str(rate))]
    result = subprocess.run(
        ["ip", "netns", "exec", topology.CENSORED, *argv],
        capture_output=True, text=True, timeout=count / rate + 60,
    )  # fmt: skip
    if result.returncode != 0:
        raise LabError(f"the probe failed: {result.stderr.strip()}")
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def down(quiet: bool = False) -> None:
    """Stop what the lab started and remove its namespaces; safe to repeat, and after a crash."""
    state = state_dir()
    pids_path = state / "pids.json"
    if BOX in topology.namespaces_up():
        # End every flow now, so the box logs their byte counts before it goes.
        topology.run("conntrack", "-F", namespace=BOX, check=False)
        time.sleep(0.5)
    if pids_path.exists():
        with contextlib.suppress(ValueError):
            for pid in json.loads(pids_path.read_text()).values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)
        time.sleep(0.3)
        pids_path.unlink(missing_ok=True)
    topology.teardown()
    for leftover in ("internet.ready", "lab.json", "link.ready"):
        (state / leftover).unlink(missing_ok=True)
    if not quiet:
        print("lab is down (the box's log stays in", state / "flows.db", "for `unwall lab report`)")


def info() -> dict[str, Any]:
    path = state_dir() / "lab.json"
    if not path.exists():
        raise LabError("the lab is not up: run `unwall lab up` first")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def run_in(namespace: str, command: list[str]) -> int:
    names = {"censored": topology.CENSORED, "box": topology.BOX, "internet": topology.INTERNET}
    for index in range(1, topology.MAX_HOMES + 1):
        home = topology.Home(index)
        names[f"home{index}"] = home.router
        names[f"vol{index}"] = home.host
    if namespace not in names:
        raise LabError(
            f"namespace must be censored, box, internet, homeN or volN, not {namespace!r}"
        )
    if names[namespace] not in topology.namespaces_up():
        if topology.BOX in topology.namespaces_up():
            raise LabError(f"the lab has no {namespace}: add homes with `unwall lab up --home`")
        raise LabError("the lab is not up: run `unwall lab up` first")
    if not command:
        raise LabError("give a command after --, e.g. unwall lab run censored -- curl ...")
    return subprocess.call(["ip", "netns", "exec", names[namespace], *command])


def report(as_json: bool = False) -> str:
    from unwall.lab.flowlog import report as flow_report

    state = state_dir()
    db = state / "flows.db"
    if not db.exists():
        raise LabError(f"no box log at {db}: run `unwall lab up` and some traffic first")
    profile_path = state / "profile.toml"
    profile = CensorProfile.load(profile_path) if profile_path.exists() else CensorProfile()
    addresses = LabAddresses()
    blocked_addresses = {
        address for name, address in addresses.zone.items() if name in profile.blocked_names
    } | {str(net.network_address) for net in profile.ip_block if net.prefixlen == 32}
    data = flow_report(db, profile.blocked_names, blocked_addresses)
    if as_json:
        return json.dumps(data, indent=2, sort_keys=True)
    lines = []
    for host, entry in sorted(data["hosts"].items()):
        lines.append(f"censored host {host}: {entry['flows']} flows, {entry['bytes']} bytes")
        for what, record in sorted(entry["circumvention_suspected"].items()):
            peers = ", ".join(record["peers"])
            lines.append(f"  CIRCUMVENTION SUSPECTED: {what} (with {peers})")
            lines.extend(f"    evidence: {reason}" for reason in record["evidence"])
        for name, record in sorted(entry["names"].items()):
            mark = "  BLOCKED DESTINATION" if record["blocked_destination"] else ""
            lines.append(f"  name    {name:<32} seen as {', '.join(record['seen_as'])}{mark}")
        for address, record in sorted(entry["addresses"].items()):
            mark = "  BLOCKED DESTINATION" if record["blocked_destination"] else ""
            verdicts = ",".join(record["verdicts"]) or "-"
            protocols = ",".join(record.get("protocols", [])) or "-"
            ports = ",".join(str(p) for p in record["ports"])
            lines.append(
                f"  address {address:<16} ports {ports:<12} flows {record['flows']:<4} "
                f"verdicts {verdicts:<6} seen {protocols}{mark}"
            )
    for m in data["measurements"]:
        lines.append(
            f"measurement {m['scenario']} via {m['path']}: ok={m['ok']} "
            f"ttfb={m['ttfb_s']} MBps={m['MBps']}"
        )
    return "\n".join(lines) or "the box saw no traffic"
