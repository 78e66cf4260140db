"""The configuration loader: defaults < the TOML file's table < command-line flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import unwall.cli
from unwall.cli import (
    BROKER_OPTIONS,
    CLIENT_OPTIONS,
    EGRESS_OPTIONS,
    VOLUNTEER_OPTIONS,
    build_parser,
)
from unwall.config import (
    ConfigError,
    Option,
    add_options,
    host_port,
    positive_float,
    positive_int,
    resolve,
    url,
)
from unwall.volunteer.relays import RelayHost

OPTIONS = [
    Option("--name", "a plain string", "default-name"),
    Option("--count", "a positive integer", 3, positive_int),
    Option("--ratio", "a positive float", 1.5, positive_float),
    Option("--listen", "an address", ("127.0.0.1", 8080), host_port),
    Option("--target", "a URL", None, url),
    Option("--key-dir", "a path", Path("keys"), Path),
    Option("--item", "repeatable strings", default=[], repeat=True),
    Option("--number", "repeatable integers", default=[7], type=int, repeat=True),
    Option("--fast", "a switch", False, is_switch=True),
]
DEFAULTS: dict[str, Any] = {
    "name": "default-name",
    "count": 3,
    "ratio": 1.5,
    "listen": ("127.0.0.1", 8080),
    "target": None,
    "key_dir": Path("keys"),
    "item": [],
    "number": [7],
    "fast": False,
}
SECTION = "role"


def make_parser(options: list[Option] = OPTIONS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test", exit_on_error=False)
    add_options(parser, options)
    return parser


def load(
    argv: list[str],
    toml: str | None = None,
    tmp_path: Path | None = None,
    options: list[Option] = OPTIONS,
    section: str = SECTION,
) -> dict[str, Any]:
    if toml is not None:
        assert tmp_path is not None
        path = tmp_path / "unwall.toml"
        path.write_text(toml, encoding="utf-8")
        argv = [*argv, "--config", str(path)]
    args = make_parser(options).parse_args(argv)
    return resolve(args, options, section)


# -- Option and add_options ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "key"),
    [("--socks", "socks"), ("--ice-server", "ice_server"), ("--key-dir", "key_dir")],
)
def test_option_key_is_the_long_flag_with_underscores(flag: str, key: str) -> None:
    assert Option(flag, "help").key == key


def test_help_lists_flags_and_defaults() -> None:
    text = make_parser().format_help()
    for option in OPTIONS:
        assert option.flag in text
    assert "--config" in text
    assert "(default: default-name)" in text
    assert "(default: 3)" in text
    assert "(default: False)" not in text  # a switch's False default is not shown


def test_bad_flag_value_is_refused_by_argparse() -> None:
    with pytest.raises(argparse.ArgumentError):
        make_parser().parse_args(["--count", "0"])
    with pytest.raises(argparse.ArgumentError):
        make_parser().parse_args(["--listen", "nowhere"])


# -- precedence ------------------------------------------------------------------------------


def test_defaults_only() -> None:
    assert load([]) == DEFAULTS


def test_default_lists_are_copies() -> None:
    first = load([])
    first["number"].append(99)
    first["item"].append("x")
    assert load([]) == DEFAULTS
    assert OPTIONS[7].default == [7]


def test_file_overrides_defaults(tmp_path: Path) -> None:
    toml = """
[role]
name = "from-file"
count = 5
ratio = 0.25
listen = "0.0.0.0:7000"
target = "https://example.org/"
key_dir = "/etc/unwall"
item = ["a", "b"]
number = [1, 2, 3]
fast = true
"""
    assert load([], toml, tmp_path) == {
        "name": "from-file",
        "count": 5,
        "ratio": 0.25,
        "listen": ("0.0.0.0", 7000),
        "target": "https://example.org/",
        "key_dir": Path("/etc/unwall"),
        "item": ["a", "b"],
        "number": [1, 2, 3],
        "fast": True,
    }


def test_flags_override_file(tmp_path: Path) -> None:
    toml = """
[role]
name = "from-file"
count = 5
listen = "0.0.0.0:7000"
item = ["a", "b"]
fast = false
"""
    argv = ["--name", "from-flag", "--listen", ":9", "--item", "c", "--fast"]
    merged = load(argv, toml, tmp_path)
    assert merged["name"] == "from-flag"
    assert merged["count"] == 5  # not given as a flag: the file's value
    assert merged["listen"] == ("127.0.0.1", 9)
    assert merged["item"] == ["c"]  # the flags replace the file's list, they do not extend it
    assert merged["fast"] is True
    assert merged["ratio"] == 1.5  # in neither: the default


def test_file_false_switch_overrides_default_true(tmp_path: Path) -> None:
    options = [Option("--on", "a switch on by default", True, is_switch=True)]
    assert load([], options=options) == {"on": True}
    assert load([], "[role]\non = false\n", tmp_path, options=options) == {"on": False}


def test_only_the_roles_table_is_read(tmp_path: Path) -> None:
    toml = """
name = "top-level"
[other]
name = "other-role"
nonsense = 1
[role]
count = 9
"""
    merged = load([], toml, tmp_path)
    assert merged["name"] == "default-name"
    assert merged["count"] == 9


@pytest.mark.parametrize("toml", ["", "# nothing\n", "[other]\nname = 'x'\n", "[role]\n"])
def test_file_without_the_table_gives_defaults(toml: str, tmp_path: Path) -> None:
    assert load([], toml, tmp_path) == DEFAULTS


def test_no_config_attribute_is_fine() -> None:
    # A namespace that never had --config (a parser built without add_options).
    assert resolve(argparse.Namespace(), OPTIONS, SECTION) == DEFAULTS


# -- repeatable options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml_value", "expected"),
    [
        ('"stun:a.example:3478"', ["stun:a.example:3478"]),  # a single value
        ('["stun:a.example:3478"]', ["stun:a.example:3478"]),
        ('["stun:a", "turn:b"]', ["stun:a", "turn:b"]),
        ("[]", []),
    ],
)
def test_repeatable_from_file(toml_value: str, expected: list[str], tmp_path: Path) -> None:
    assert load([], f"[role]\nitem = {toml_value}\n", tmp_path)["item"] == expected


@pytest.mark.parametrize(
    ("toml_value", "expected"),
    [("5", [5]), ("[5]", [5]), ('["5", 6]', [5, 6]), ("[]", [])],
)
def test_repeatable_values_go_through_the_type(
    toml_value: str, expected: list[int], tmp_path: Path
) -> None:
    assert load([], f"[role]\nnumber = {toml_value}\n", tmp_path)["number"] == expected


def test_repeatable_from_flags() -> None:
    merged = load(["--item", "a", "--number", "1", "--item", "b", "--number", "2"])
    assert merged["item"] == ["a", "b"]
    assert merged["number"] == [1, 2]


def test_repeatable_bad_item_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[role\] number"):
        load([], '[role]\nnumber = [1, "two"]\n', tmp_path)


# -- errors ----------------------------------------------------------------------------------


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    toml = '[role]\nname = "x"\nzeta = 1\nalpha = true\n'
    with pytest.raises(ConfigError) as caught:
        load([], toml, tmp_path)
    message = str(caught.value)
    assert "unknown key(s) in [role]" in message
    assert "alpha, zeta" in message  # all of them, sorted
    assert str(tmp_path / "unwall.toml") in message
    assert "known:" in message and "key_dir" in message


def test_dashed_key_is_unknown(tmp_path: Path) -> None:
    # Keys are the long flags with underscores: key_dir, not key-dir.
    with pytest.raises(ConfigError, match="key-dir"):
        load([], '[role]\nkey-dir = "/x"\n', tmp_path)


def test_unknown_key_is_refused_even_when_the_flag_is_given(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="typo"):
        load(["--name", "x"], "[role]\ntypo = 1\n", tmp_path)


@pytest.mark.parametrize(
    "toml",
    [
        "[role\nname = 1\n",
        "[role]\nname = \n",
        "[role]\nname = unquoted\n",
        "[role]\nname = 'a'\nname = 'b'\n",
        "[role]\n= 3\n",
    ],
)
def test_invalid_toml(toml: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load([], toml, tmp_path)
    assert str(tmp_path / "unwall.toml") in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    args = make_parser().parse_args(["--config", str(missing)])
    with pytest.raises(ConfigError, match="does not exist") as caught:
        resolve(args, OPTIONS, SECTION)
    assert str(missing) in str(caught.value)


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[role\] .* must be a table"):
        load([], "role = 5\n", tmp_path)


# (key = TOML value, words the error must hold)
WRONG_TYPES = [
    ('fast = "yes"', ["[role] fast", "true or false"]),
    ("fast = 1", ["[role] fast", "true or false"]),
    ('fast = ["true"]', ["[role] fast", "true or false"]),
    ("count = 0", ["[role] count", "at least 1"]),
    ("count = -4", ["[role] count"]),
    ('count = "many"', ["[role] count"]),
    ("count = 2.5", ["[role] count"]),
    ("count = true", ["[role] count"]),
    ("ratio = 0", ["[role] ratio", "positive"]),
    ('ratio = "fast"', ["[role] ratio"]),
    ('listen = "nowhere"', ["[role] listen", "HOST:PORT"]),
    ("listen = 7000", ["[role] listen"]),
    ('listen = "127.0.0.1:70000"', ["[role] listen", "out of range"]),
    ('target = "ftp://example.org/"', ["[role] target", "URL"]),
]


@pytest.mark.parametrize(("assignment", "words"), WRONG_TYPES)
def test_wrong_types_in_file(assignment: str, words: list[str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load([], f"[role]\n{assignment}\n", tmp_path)
    for word in words:
        assert word in str(caught.value)


def test_integer_in_file_for_a_string_option(tmp_path: Path) -> None:
    assert load([], "[role]\nname = 42\n", tmp_path)["name"] == "42"


@pytest.mark.parametrize("value", ['["a", "b"]', "{ a = 1 }"])
def test_list_for_a_single_valued_option_is_refused(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[role\] name"):
        load([], f"[role]\nname = {value}\n", tmp_path)


@pytest.mark.parametrize("kind", ["directory", "not utf-8"])
def test_unreadable_config_is_a_config_error(kind: str, tmp_path: Path) -> None:
    if kind == "directory":
        path = tmp_path
    else:
        path = tmp_path / "binary.toml"
        path.write_bytes(b"\xff\xfe[role]\n")
    args = make_parser().parse_args(["--config", str(path)])
    with pytest.raises(ConfigError):
        resolve(args, OPTIONS, SECTION)


# -- value types -----------------------------------------------------------------------------

HOST_PORTS = [
    ("127.0.0.1:1080", ("127.0.0.1", 1080)),
    ("0.0.0.0:7000", ("0.0.0.0", 7000)),
    ("localhost:8118", ("localhost", 8118)),
    ("broker.example:443", ("broker.example", 443)),
    ("[::1]:1080", ("::1", 1080)),
    ("[::]:0", ("::", 0)),
    ("[2001:db8::1]:65535", ("2001:db8::1", 65535)),
    (":1080", ("127.0.0.1", 1080)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("127.0.0.1:08080", ("127.0.0.1", 8080)),
]


@pytest.mark.parametrize(("text", "expected"), HOST_PORTS)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert host_port(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1080",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:http",
        "127.0.0.1:-1",
        "127.0.0.1:65536",
        "127.0.0.1:99999",
        "127.0.0.1:1080 ",
        "127.0.0.1: 1080",
        "127.0.0.1:1e3",
        "[::1]",
        "::1",
    ],
)
def test_host_port_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        host_port(text)


def test_host_port_out_of_range_message() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="65536 is out of range"):
        host_port("127.0.0.1:65536")


@pytest.mark.parametrize(
    "text", ["http://a/", "https://a.example:8443/x", "ws://127.0.0.1:7000/v1/relay", "wss://e/"]
)
def test_url_accepts(text: str) -> None:
    assert url(text) == text


@pytest.mark.parametrize("text", ["", "ftp://a/", "a.example", "http:/a", "//a/", "stun:a:3478"])
def test_url_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="URL"):
        url(text)


NUMBERS: list[tuple[Callable[[str], Any], str, Any]] = [
    (positive_int, "1", 1),
    (positive_int, "1000", 1000),
    (positive_int, " 8 ", 8),
    (positive_float, "0.001", 0.001),
    (positive_float, "20", 20.0),
    (positive_float, "1e3", 1000.0),
]


@pytest.mark.parametrize(("parse", "text", "expected"), NUMBERS)
def test_positive_numbers(parse: Callable[[str], Any], text: str, expected: Any) -> None:
    value = parse(text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (positive_int, "0"),
        (positive_int, "-1"),
        (positive_float, "0"),
        (positive_float, "0.0"),
        (positive_float, "-0.5"),
    ],
)
def test_positive_numbers_refuse_non_positive(parse: Callable[[str], Any], text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)


@pytest.mark.parametrize(
    ("parse", "text"),
    [(positive_int, "x"), (positive_int, "1.5"), (positive_int, ""), (positive_float, "fast")],
)
def test_positive_numbers_refuse_non_numbers(parse: Callable[[str], Any], text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)


# -- the real roles --------------------------------------------------------------------------

ROLES = [
    ("broker", BROKER_OPTIONS),
    ("egress", EGRESS_OPTIONS),
    ("volunteer", VOLUNTEER_OPTIONS),
    ("client", CLIENT_OPTIONS),
]


def real(argv: list[str], options: list[Option], section: str) -> dict[str, Any]:
    return resolve(build_parser().parse_args(argv), options, section)


@pytest.mark.parametrize(("role", "options"), ROLES)
def test_real_roles_defaults(role: str, options: list[Option]) -> None:
    keys = [option.key for option in options]
    assert len(keys) == len(set(keys)), "two options of one role share a key"
    merged = real([role], options, role)
    assert set(merged) == set(keys)
    for option in options:
        assert merged[option.key] == option.default
        assert option.help


def test_real_defaults() -> None:
    client = real(["client"], CLIENT_OPTIONS, "client")
    assert client["socks"] == ("127.0.0.1", 1080)
    assert client["http"] == ("127.0.0.1", 8118)
    assert client["ice_server"] == []  # no implicit STUN server
    assert client["bridge"] is None
    egress = real(["egress"], EGRESS_OPTIONS, "egress")
    assert egress["key_dir"] == Path("egress-keys")
    assert egress["allow"] == []


README_TOML = """
[client]
bridge = "unwall1 broker=https://broker.example/ pin=sha256:AAAA"
socks = "127.0.0.1:1080"
ice_server = ["stun:stun.example.org:3478"]

[egress]
listen = "0.0.0.0:7000"
ports = "80,443"
"""


def test_real_readme_example(tmp_path: Path) -> None:
    path = tmp_path / "unwall.toml"
    path.write_text(README_TOML)
    client = real(["client", "--config", str(path)], CLIENT_OPTIONS, "client")
    assert client["bridge"].startswith("unwall1 broker=https://broker.example/")
    assert client["socks"] == ("127.0.0.1", 1080)
    assert client["ice_server"] == ["stun:stun.example.org:3478"]
    assert client["http"] == ("127.0.0.1", 8118)
    egress = real(["egress", "--config", str(path)], EGRESS_OPTIONS, "egress")
    assert egress["listen"] == ("0.0.0.0", 7000)
    assert egress["ports"] == "80,443"
    assert egress["max_sessions"] == 1000
    # a role without a table gets its defaults
    broker = real(["broker", "--config", str(path)], BROKER_OPTIONS, "broker")
    assert broker["listen"] == ("127.0.0.1", 8080)


def test_real_flags_win_over_file(tmp_path: Path) -> None:
    path = tmp_path / "unwall.toml"
    path.write_text(README_TOML)
    argv = ["client", "--config", str(path), "--socks", "[::1]:1081", "--ice-server", "stun:x:1"]
    client = real(argv, CLIENT_OPTIONS, "client")
    assert client["socks"] == ("::1", 1081)
    assert client["ice_server"] == ["stun:x:1"]
    assert client["bridge"].startswith("unwall1")


def test_real_every_key_from_file(tmp_path: Path) -> None:
    path = tmp_path / "unwall.toml"
    path.write_text(
        """
[broker]
listen = "[::]:8080"
poll_timeout = 5
answer_timeout = 2.5
turn_secret = "kept out of the process list"
turn_url = ["turn:turn.example:3478", "turn:turn.example:3478?transport=tcp"]

[egress]
listen = ":7001"
key_dir = "/etc/unwall"
allow = "127.0.0.0/8"
ports = "443"
connect_timeout = 3
max_sessions = 10

[volunteer]
broker = "https://broker.example/"
egress = "wss://egress.example/v1/relay"
capacity = 2
ice_server = "stun:stun.example.org:3478"
host_address = ["127.0.0.1"]
nat = "symmetric"
webrtc = "chromium"
relay_host = ["*.egress.example", "ws://10.1.2.3:7000"]

[client]
broker = "http://127.0.0.1:8080/"
pin = "sha256:x"
http = "127.0.0.1:3128"
stream_wait = 1
"""
    )
    config = ["--config", str(path)]
    assert real(["broker", *config], BROKER_OPTIONS, "broker") == {
        "listen": ("::", 8080),
        "poll_timeout": 5.0,
        "answer_timeout": 2.5,
        "egress_url": None,
        "ice_server": [],
        "turn_secret": "kept out of the process list",
        "turn_url": ["turn:turn.example:3478", "turn:turn.example:3478?transport=tcp"],
        "turn_ttl": 600.0,
        "egress": [],
        "report_secret": None,
        "earn_room": None,
        "trusted_proxy": [],
        "offers_per_minute": 120.0,
        "redis": None,
    }
    assert real(["egress", *config], EGRESS_OPTIONS, "egress") == {
        "listen": ("127.0.0.1", 7001),
        "key_dir": Path("/etc/unwall"),
        "allow": ["127.0.0.0/8"],
        "ports": "443",
        "connect_timeout": 3.0,
        "max_sessions": 10,
        "grace": 60.0,
        "max_connections": None,
        "session_connections": 256,
        "session_stream_rate": 50.0,
        "session_rate": 12_500_000,
        "sessions_per_address": 64,
        "sessions_per_network": 256,
        "report_to": [],
        "report_over_http": None,
        "report_secret": None,
        "no_retry": None,
    }
    assert real(["volunteer", *config], VOLUNTEER_OPTIONS, "volunteer") == {
        "broker": "https://broker.example/",
        "egress": "wss://egress.example/v1/relay",
        "capacity": 2,
        "max_rate": None,
        "stats_interval": 60.0,
        "ice_server": ["stun:stun.example.org:3478"],
        "host_address": ["127.0.0.1"],
        "turn_user": None,
        "turn_password": None,
        "nat": "symmetric",
        "webrtc": "chromium",
        "carrier": None,
        "metrics": None,
        "check": None,
        "relay_host": [RelayHost.parse("*.egress.example"), RelayHost.parse("ws://10.1.2.3:7000")],
    }
    client = real(["client", *config], CLIENT_OPTIONS, "client")
    assert client["broker"] == "http://127.0.0.1:8080/"
    assert client["pin"] == "sha256:x"
    assert client["http"] == ("127.0.0.1", 3128)
    assert client["stream_wait"] == 1.0
    assert client["webrtc"] == "aiortc"  # the default engine
    assert client["page"] == ("127.0.0.1", 8119)  # the status page, by default
    assert client["pac_list"] is None
    assert client["self_test_url"] == "https://example.com/"


@pytest.mark.parametrize(
    ("role", "options", "key"),
    [
        ("client", CLIENT_OPTIONS, "capacity"),  # another role's key
        ("client", CLIENT_OPTIONS, "ice-server"),
        ("volunteer", VOLUNTEER_OPTIONS, "pin"),
        ("egress", EGRESS_OPTIONS, "bridge"),
        ("broker", BROKER_OPTIONS, "socks"),
    ],
)
def test_real_unknown_key(role: str, options: list[Option], key: str, tmp_path: Path) -> None:
    path = tmp_path / "unwall.toml"
    path.write_text(f'[{role}]\n"{key}" = "x"\n')
    with pytest.raises(ConfigError, match=f"unknown key\\(s\\) in \\[{role}\\].*{key}"):
        real([role, "--config", str(path)], options, role)


def test_main_reports_config_errors_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(unwall.cli, "setup_logging", lambda *args: None)
    path = tmp_path / "unwall.toml"
    path.write_text("[volunteer]\nbrokr = 'http://x/'\n")
    assert unwall.cli.main(["volunteer", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unwall volunteer:" in err
    assert "brokr" in err
    path.write_text("[client\n")
    assert unwall.cli.main(["client", "--config", str(path)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert unwall.cli.main(["broker", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_egress_by_default_dials_only_web_ports_at_a_bounded_rate() -> None:
    """Issue 22, row 4: an egress is no open proxy to every port (mail, SSH) or at any
    rate unless its operator says so."""
    merged = real(["egress"], EGRESS_OPTIONS, "egress")
    assert merged["ports"] == "80,443"
    assert merged["session_rate"] == 12_500_000
    assert (merged["sessions_per_address"], merged["sessions_per_network"]) == (64, 256)


def test_a_secret_comes_from_the_file_or_the_environment_never_a_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "unwall.toml"
    path.write_text('[broker]\nreport_secret = "from the file"\n')
    monkeypatch.delenv("UNWALL_REPORT_SECRET", raising=False)
    assert real(["broker", "--config", str(path)], BROKER_OPTIONS, "broker")["report_secret"] == (
        "from the file"
    )
    monkeypatch.setenv("UNWALL_REPORT_SECRET", "from the environment")
    merged = real(["broker", "--config", str(path)], BROKER_OPTIONS, "broker")
    assert merged["report_secret"] == "from the environment"
    with pytest.raises(SystemExit):
        real(["broker", "--report-secret", "on the command line"], BROKER_OPTIONS, "broker")
