"""The `unwall` command as a user runs it: `python -m unwall ...` in a subprocess."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from unwall.cli import BROKER_OPTIONS, CLIENT_OPTIONS, EGRESS_OPTIONS, VOLUNTEER_OPTIONS
from unwall.config import Option
from unwall.egress.identity import KEY_FILE, SECRET_FILE, load_identity
from unwall.local import free_port
from unwall.wire.bridgeline import BridgeLine
from unwall.wire.sealed import public_key_text

PIN = "sha256:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"


def unwall(
    *args: str, cwd: Path | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unwall", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


# -- help ------------------------------------------------------------------------------------


def test_help() -> None:
    result = unwall("--help")
    assert result.returncode == 0, describe(result)
    for word in ("broker", "egress", "volunteer", "client", "demo", "bench", "--verbose"):
        assert word in result.stdout


def test_version() -> None:
    result = unwall("--version")
    assert result.returncode == 0, describe(result)
    assert result.stdout.startswith("unwall ")


def flags(options: list[Option]) -> list[str]:
    return ["--config", *(option.flag for option in options)]


ROLE_FLAGS = [
    (["broker"], flags(BROKER_OPTIONS)),
    (["egress"], [*flags(EGRESS_OPTIONS), "keygen"]),
    (["egress", "keygen"], ["--key-dir", "--broker", "--front", "--ice-server", "--force"]),
    (["volunteer"], flags(VOLUNTEER_OPTIONS)),
    (["client"], flags(CLIENT_OPTIONS)),
    (["demo"], ["--socks", "--http", "--check"]),
    (["bench"], ["--json", "--size-mb", "--profile"]),
]


@pytest.mark.parametrize(("role", "expected"), ROLE_FLAGS, ids=lambda v: " ".join(v))
def test_role_help(role: list[str], expected: list[str]) -> None:
    result = unwall(*role, "--help")
    assert result.returncode == 0, describe(result)
    assert result.stdout.startswith(f"usage: unwall {' '.join(role)}")
    for flag in expected:
        assert flag in result.stdout, f"{flag} missing from `unwall {' '.join(role)} --help`"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nonsense"],
        ["client", "--socks", "nowhere"],
        ["client", "--stream-wait", "0"],
        ["volunteer", "--broker", "ftp://x/"],
        ["client", "--no-such-flag"],
        ["client", "--webrtc", "firefox"],
        ["volunteer", "--webrtc", "libdatachannel"],
    ],
    ids=lambda v: " ".join(v) or "no role",
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    result = unwall(*argv)
    assert result.returncode == 2, describe(result)
    assert "usage: unwall" in result.stderr
    assert "Traceback" not in result.stderr


# -- egress keygen ---------------------------------------------------------------------------


def parse_keygen(stdout: str) -> tuple[str, BridgeLine]:
    lines = stdout.splitlines()
    pins = [line.removeprefix("pin: ") for line in lines if line.startswith("pin: ")]
    bridges = [line for line in lines if line.startswith("unwall1 ")]
    assert len(pins) == 1, stdout
    assert len(bridges) == 1, stdout
    return pins[0], BridgeLine.parse(bridges[0])


def test_keygen(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    broker = "http://127.0.0.1:9/"
    result = unwall("egress", "keygen", "--key-dir", str(key_dir), "--broker", broker)
    assert result.returncode == 0, describe(result)
    pin, line = parse_keygen(result.stdout)
    assert line.pin == pin
    assert line.broker == broker
    assert load_identity(key_dir).pin == pin
    assert stat.S_IMODE((key_dir / KEY_FILE).stat().st_mode) == 0o600
    # The secret brokers and egresses share, made once, for the owner's eyes only.
    assert stat.S_IMODE((key_dir / SECRET_FILE).stat().st_mode) == 0o600
    shared = (key_dir / SECRET_FILE).read_text()
    assert len(shared.strip()) >= 40
    # the brokers' key, derived from that secret: clients seal their offers to it
    assert line.broker_key == public_key_text(shared.strip())
    assert f"broker key (from the secret the brokers hold): {line.broker_key}" in result.stdout
    key_before = (key_dir / KEY_FILE).read_bytes()

    again = unwall("egress", "keygen", "--key-dir", str(key_dir), "--broker", broker)
    assert again.returncode == 1, describe(again)
    assert "already exists" in again.stderr
    assert "--force" in again.stderr
    assert "Traceback" not in again.stderr
    assert "unwall1" not in again.stdout
    assert (key_dir / KEY_FILE).read_bytes() == key_before
    assert load_identity(key_dir).pin == pin

    forced = unwall("egress", "keygen", "--key-dir", str(key_dir), "--broker", broker, "--force")
    assert forced.returncode == 0, describe(forced)
    new_pin, new_line = parse_keygen(forced.stdout)
    assert new_pin != pin
    assert new_line.pin == new_pin
    assert new_line.broker_key == line.broker_key
    assert load_identity(key_dir).pin == new_pin
    assert (key_dir / SECRET_FILE).read_text() == shared  # kept: brokers hold a copy


def test_keygen_puts_the_fronts_in_the_line(tmp_path: Path) -> None:
    fronts = ["https://cdn-a.example/", "https://cdn-b.example/"]
    result = unwall(
        "egress", "keygen", "--key-dir", str(tmp_path / "keys"), "--broker",
        "https://broker.example/", "--front", fronts[0], "--front", fronts[1],
    )  # fmt: skip
    assert result.returncode == 0, describe(result)
    assert parse_keygen(result.stdout)[1].fronts == tuple(fronts)
    with_ice = unwall(
        "egress", "keygen", "--key-dir", str(tmp_path / "ice"), "--ice-server",
        "stun:stun.example:3478", "--ice-server", "turns:turn.example:443?transport=tcp",
    )  # fmt: skip
    assert with_ice.returncode == 0, describe(with_ice)
    assert parse_keygen(with_ice.stdout)[1].ice == (
        "stun:stun.example:3478",
        "turns:turn.example:443?transport=tcp",
    )
    secret_in_line = unwall(
        "egress", "keygen", "--key-dir", str(tmp_path / "bad"), "--ice-server",
        "turn:user:password@turn.example",
    )  # fmt: skip
    assert secret_in_line.returncode == 2 and "without credentials" in secret_in_line.stderr
    assert not (tmp_path / "bad").exists()
    bad = unwall(
        "egress", "keygen", "--key-dir", str(tmp_path / "other"), "--front", "http://cdn.example/"
    )
    assert bad.returncode == 2 and "must be an https:// URL" in bad.stderr, describe(bad)
    assert not (tmp_path / "other").exists()  # nothing written


def test_keygen_bad_broker_url(tmp_path: Path) -> None:
    result = unwall("egress", "keygen", "--key-dir", str(tmp_path), "--broker", "broker.example")
    assert result.returncode == 2, describe(result)
    assert "URL" in result.stderr
    assert not (tmp_path / KEY_FILE).exists()


def test_keygen_honours_egress_key_dir(tmp_path: Path) -> None:
    wanted = tmp_path / "wanted"
    result = unwall("egress", "--key-dir", str(wanted), "keygen", cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert (wanted / KEY_FILE).exists()
    assert not (tmp_path / "egress-keys").exists()


def test_egress_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    assert unwall("egress", "keygen", "--key-dir", str(key_dir)).returncode == 0
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    (key_dir / KEY_FILE).chmod(0o644)
    result = unwall("egress", "--key-dir", str(key_dir), "--listen", "127.0.0.1:0")
    assert result.returncode == 2, describe(result)
    assert f"chmod 600 {key_dir / KEY_FILE}" in result.stderr


# -- refusals --------------------------------------------------------------------------------


def test_client_without_bridge_or_broker(tmp_path: Path) -> None:
    result = unwall("client", cwd=tmp_path)
    assert result.returncode == 2, describe(result)
    assert "--bridge" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argv",
    [["--broker", "http://127.0.0.1:9/"], ["--pin", PIN]],
    ids=["broker only", "pin only"],
)
def test_client_with_half_of_it(argv: list[str]) -> None:
    result = unwall("client", *argv)
    assert result.returncode == 2, describe(result)
    assert "--bridge" in result.stderr
    assert "--broker and --pin" in result.stderr


@pytest.mark.parametrize(
    ("bridge", "words"),
    [
        ("garbage", ["unwall1", "garbage"]),
        ("unwall1 broker=http://127.0.0.1:9/", ["lacks", "pin"]),
        ("unwall1 broker=http://127.0.0.1:9/ pin=sha256:AAAA", ["pin", "32-byte"]),
        (f"unwall1 broker=ftp://x/ pin={PIN}", ["broker", "http"]),
        (f"unwall1 broker=http://127.0.0.1:9/ pin={PIN} brokerkey=x25519:AAAA", ["brokerkey"]),
        (f"unwall1 broker=http://127.0.0.1:9/ pin={PIN} fronts=https://x/", ["'fronts'"]),
    ],
)
def test_client_bad_bridge(bridge: str, words: list[str]) -> None:
    result = unwall("client", "--bridge", bridge)
    assert result.returncode == 2, describe(result)
    for word in words:
        assert word in result.stderr
    assert "Traceback" not in result.stderr


def test_client_bad_broker_key() -> None:
    result = unwall(
        "client", "--broker", "http://127.0.0.1:9/", "--pin", PIN, "--broker-key", "x25519:!!"
    )
    assert result.returncode == 2, describe(result)
    assert "--broker-key: a broker key is base64url" in result.stderr
    assert "Traceback" not in result.stderr


def test_client_bad_pin() -> None:
    result = unwall("client", "--broker", "http://127.0.0.1:9/", "--pin", "sha256:nope")
    assert result.returncode == 2, describe(result)
    assert "pin" in result.stderr
    assert "Traceback" not in result.stderr


def test_egress_without_key(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    started = time.monotonic()
    result = unwall("egress", "--key-dir", str(empty), "--listen", "127.0.0.1:0", timeout=20)
    assert time.monotonic() - started < 15
    assert result.returncode != 0, describe(result)
    assert "unwall egress keygen" in result.stderr
    assert str(empty) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("role", ["broker", "egress"])
@pytest.mark.parametrize("flag", ["--report-secret", "--report-secret=s3cret"])
def test_no_secret_on_a_command_line(role: str, flag: str, tmp_path: Path) -> None:
    """Issue 22: a secret on a command line is readable by every local user in
    /proc/PID/cmdline; the flag only says where the secret goes."""
    argv = [flag] if "=" in flag else [flag, "s3cret"]
    result = unwall(role, *argv, "--listen", "127.0.0.1:0", cwd=tmp_path)
    assert result.returncode == 2, describe(result)
    assert "command line" in result.stderr and "UNWALL_REPORT_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


def test_broker_and_egress_refuse_to_start_without_the_shared_secret(tmp_path: Path) -> None:
    """Without the secret, an egress would serve no one (no ticket verifies) and a broker
    would vouch for no one: both say so at once."""
    assert unwall("egress", "keygen", "--key-dir", str(tmp_path)).returncode == 0
    (tmp_path / SECRET_FILE).unlink()
    for argv in (["egress", "--key-dir", str(tmp_path)], ["broker"]):
        result = unwall(*argv, "--listen", "127.0.0.1:0", cwd=tmp_path)
        assert result.returncode == 2, describe(result)
        assert "UNWALL_REPORT_SECRET" in result.stderr, describe(result)
        assert "Traceback" not in result.stderr


def test_egress_refuses_a_secret_others_can_read(tmp_path: Path) -> None:
    assert unwall("egress", "keygen", "--key-dir", str(tmp_path)).returncode == 0
    (tmp_path / SECRET_FILE).chmod(0o644)
    result = unwall("egress", "--key-dir", str(tmp_path), "--listen", "127.0.0.1:0")
    assert result.returncode == 2, describe(result)
    assert f"chmod 600 {tmp_path / SECRET_FILE}" in result.stderr


def test_egress_bad_policy(tmp_path: Path) -> None:
    assert unwall("egress", "keygen", "--key-dir", str(tmp_path)).returncode == 0
    result = unwall(
        "egress", "--key-dir", str(tmp_path), "--listen", "127.0.0.1:0", "--allow", "not-a-cidr"
    )
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argv",
    [[], ["--egress", "ws://127.0.0.1:9/v1/relay"]],
    ids=["nothing", "egress only"],
)
def test_volunteer_without_broker(argv: list[str]) -> None:
    result = unwall("volunteer", *argv)
    assert result.returncode == 2, describe(result)
    assert "--broker" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("role", "key"),
    [
        ("client", "socks_port"),
        ("client", "capacity"),
        ("volunteer", "brokr"),
        ("egress", "listen-address"),
        ("broker", "poll"),
    ],
)
def test_config_unknown_key(role: str, key: str, tmp_path: Path) -> None:
    config = tmp_path / "unwall.toml"
    config.write_text(f'[{role}]\n"{key}" = "x"\n')
    result = unwall(role, "--config", str(config))
    assert result.returncode == 2, describe(result)
    assert key in result.stderr
    assert f"[{role}]" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("[client\n", ["not valid TOML"]),
        ("[client]\nsocks = 'nowhere'\n", ["[client] socks", "HOST:PORT"]),
        ("[client]\nsocks = 1080\n", ["[client] socks"]),
        ("[client]\nstream_wait = -1\n", ["[client] stream_wait", "positive"]),
    ],
)
def test_config_bad_values(content: str, words: list[str], tmp_path: Path) -> None:
    config = tmp_path / "unwall.toml"
    config.write_text(content)
    result = unwall("client", "--config", str(config))
    assert result.returncode == 2, describe(result)
    for word in words:
        assert word in result.stderr
    assert "Traceback" not in result.stderr


def test_config_missing_file(tmp_path: Path) -> None:
    result = unwall("broker", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2, describe(result)
    assert "does not exist" in result.stderr


def test_config_bridge_from_file(tmp_path: Path) -> None:
    # The bridge line may come from the file; a bad one is refused as if it were a flag.
    config = tmp_path / "unwall.toml"
    config.write_text('[client]\nbridge = "unwall1 pin=sha256:x"\n')
    result = unwall("client", "--config", str(config))
    assert result.returncode == 2, describe(result)
    assert "broker" in result.stderr


# -- demo ------------------------------------------------------------------------------------


def test_demo_check() -> None:
    socks, http = free_port(), free_port()
    argv = ["demo", "--check", "--socks", f"127.0.0.1:{socks}", "--http", f"127.0.0.1:{http}"]
    result = unwall(*argv, timeout=120)
    assert result.returncode == 0, describe(result)
    assert "OK" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def children_of(pid: int) -> dict[int, str]:
    """PID -> command line of each live child process of `pid`."""
    result = subprocess.run(
        ["ps", "-ww", "--ppid", str(pid), "-o", "pid=,args="],
        capture_output=True,
        text=True,
        check=False,
    )
    found: dict[int, str] = {}
    for line in result.stdout.splitlines():
        child, _, args = line.strip().partition(" ")
        found[int(child)] = args
    return found


def alive(pid: int, args: str) -> bool:
    """Whether `pid` is still a running (not zombie) process with these arguments."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z" and cmdline.strip() == args.strip()


def test_demo_ctrl_c() -> None:
    socks, http = free_port(), free_port()
    argv = ["demo", "--socks", f"127.0.0.1:{socks}", "--http", f"127.0.0.1:{http}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "unwall", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell without job control starts background jobs with SIGINT ignored, and
        # Python keeps an inherited SIG_IGN: the demo would never see our Ctrl-C when the
        # suite itself runs in the background. The demo gets the default, as in a terminal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    children: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 60
        while not any("Press Ctrl-C" in line for line in output):
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no 'Press Ctrl-C' in 60 s:\n" + "".join(output)
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, "demo ended early:\n" + "".join(output)
            output.append(line)

        children = {pid: args for pid, args in children_of(process.pid).items() if "unwall" in args}
        assert len(children) == 4, children  # broker, egress, volunteer, client

        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        try:
            returncode = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            still = {pid: args for pid, args in children.items() if alive(pid, args)}
            while not lines.empty():
                line = lines.get_nowait()
                if line is not None:
                    output.append(line)
            pytest.fail(f"demo still running 15 s after Ctrl-C; alive: {still}\n" + "".join(output))
        assert time.monotonic() - started < 15
        reader.join(timeout=5)
        while True:
            try:
                line = lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                output.append(line)
        text = "".join(output)
        assert returncode == 0, text
        assert "Traceback" not in text
        assert "shutting down" in text
        leftover = {pid: args for pid, args in children.items() if alive(pid, args)}
        assert not leftover, f"processes left behind: {leftover}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid, args in children.items():
            if alive(pid, args):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
