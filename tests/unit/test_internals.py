"""The private internals unwall patches in aiortc, aioice and aioquic are checked before they
are relied on (unwall.transport.internals), and the aiortc engine patches only when asked
(`install_patches`), never at import."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
from collections.abc import Callable
from typing import Any

import aioice.ice
import aioice.mdns
import aioquic.quic.connection
import aioquic.quic.recovery
import aiortc.rtcdtlstransport
import aiortc.rtcpeerconnection
import aiortc.rtcsctptransport
import pytest

from unwall import cli
from unwall.transport import internals, quic
from unwall.transport.aiortc_engine import dtls, engine, ice, sctp, sdp, turn
from unwall.transport.internals import IncompatibleDependency, Needs

RTCSctpTransport = aiortc.rtcsctptransport.RTCSctpTransport
QuicConnection = aioquic.quic.connection.QuicConnection

#: every check, and the library it checks
CHECKS: dict[str, tuple[Callable[[], None], str]] = {
    "ice": (ice.check, "aioice"),
    "turn": (turn.check, "aioice"),
    "sdp": (sdp.check, "aiortc"),
    "sctp": (sctp.check, "aiortc"),
    "dtls": (dtls.check, "aiortc"),
    "quic": (quic.check_aioquic, "aioquic"),
}


@pytest.fixture(autouse=True)
def _check_aioquic_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quic, "_aioquic_checked", False)  # it checks once per process


def test_every_patching_module_has_a_check() -> None:
    assert {module.__name__.rsplit(".", 1)[1] for module in engine.PATCHED} | {"quic"} == set(
        CHECKS
    )


@pytest.mark.parametrize("name", CHECKS)
def test_each_check_passes_on_the_installed_versions(name: str) -> None:
    check, library = CHECKS[name]
    check()
    assert internals.pinned_version(library) == internals.installed_version(library)


#: (check, owner, private): a private each check looks for
REMOVED: list[tuple[str, Any, str]] = [
    ("sctp", RTCSctpTransport, "_mark_received"),
    ("sctp", RTCSctpTransport, "_receive_sack_chunk"),
    ("sctp", RTCSctpTransport, "_maybe_abandon"),
    ("sctp", aiortc.rtcsctptransport, "USERDATA_MAX_LENGTH"),
    ("sdp", aiortc.rtcpeerconnection, "add_transport_description"),
    ("dtls", aiortc.rtcdtlstransport, "generate_certificate"),
    ("dtls", aiortc.rtcdtlstransport, "SRTP_PROFILES"),
    ("ice", aioice.ice, "get_host_addresses"),
    ("ice", aioice.mdns, "create_mdns_protocol"),
    ("ice", aioice.ice.Connection, "_prune_components"),
    ("ice", aioice.ice.Connection, "build_request"),
    ("ice", aioice.ice.StunProtocol, "request"),
    ("turn", aioice.ice.Connection, "_pair_remote_candidate"),
    ("quic", QuicConnection, "_write_stream_limits"),
    ("quic", QuicConnection, "_initialize"),
    ("quic", aioquic.quic.recovery.QuicPacketRecovery, "_detect_loss"),
    ("quic", aioquic.quic.recovery.QuicPacketPacer, "update_bucket"),
]


@pytest.mark.parametrize(("name", "owner", "private"), REMOVED)
def test_a_removed_private_fails_its_check_naming_it_and_the_versions(
    monkeypatch: pytest.MonkeyPatch, name: str, owner: Any, private: str
) -> None:
    check, library = CHECKS[name]
    monkeypatch.delattr(owner, private)
    with pytest.raises(IncompatibleDependency) as raised:
        check()
    message = str(raised.value)
    pinned = internals.pinned_version(library)
    found = internals.installed_version(library)
    assert message.startswith(f"unwall needs {library} {pinned} (found {found}): ")
    shown = owner.__name__ if isinstance(owner, types.ModuleType) else owner.__qualname__
    assert f": {shown}.{private} is gone;" in message
    assert message.endswith("; reinstall with ./bootstrap")


def test_the_message_names_the_version_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(internals, "installed_version", lambda distribution: "1.17.0")
    monkeypatch.delattr(RTCSctpTransport, "_mark_received")
    with pytest.raises(IncompatibleDependency) as raised:
        sctp.check()
    assert str(raised.value) == (
        f"unwall needs aiortc {internals.pinned_version('aiortc')} (found 1.17.0): "
        "RTCSctpTransport._mark_received is gone; reinstall with ./bootstrap"
    )


def test_a_replaced_private_with_other_parameters_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def _mark_received(self: Any, tsn: int, chunk: Any) -> bool:
        return False

    monkeypatch.setattr(RTCSctpTransport, "_mark_received", _mark_received)
    with pytest.raises(
        IncompatibleDependency, match=r"_mark_received takes \(self, tsn, chunk\), "
    ):
        sctp.check()


def test_a_keyword_no_longer_taken_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def _on_packets_lost(self: Any, *, now: float, packets: Any, space: Any) -> None: ...

    recovery = aioquic.quic.recovery.QuicPacketRecovery
    monkeypatch.setattr(recovery, "_on_packets_lost", _on_packets_lost)
    with pytest.raises(IncompatibleDependency, match="no longer takes congestion_event"):
        quic.check_aioquic()


class Library:
    """A library's class: what its instances have is set in its methods."""

    annotated: int

    def __init__(self) -> None:
        self._kept = 0

    def method(self) -> int:
        return self._read_only  # type: ignore[no-any-return, attr-defined]


def test_an_attribute_instances_no_longer_set_fails() -> None:
    need = Needs("aiortc")
    need.instance_attributes(Library, "_kept", "_read_only", "annotated", "method", "_renamed")
    assert need.missing == ["Library no longer sets ._renamed"]
    with pytest.raises(IncompatibleDependency, match=r"Library no longer sets \._renamed"):
        need.verify()


def test_the_first_quic_connection_checks_aioquic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(QuicConnection, "_write_connection_limits")
    with pytest.raises(IncompatibleDependency, match="_write_connection_limits is gone"):
        quic.FlowControlledConnection(configuration=quic.client_configuration(1200))


def test_another_version_with_every_private_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(internals, "installed_version", lambda distribution: "9.9.9")
    monkeypatch.setattr(internals, "_warned", set())
    with caplog.at_level(logging.WARNING, "unwall.internals"):
        sctp.check()
        dtls.check()
    assert [record.getMessage()[:30] for record in caplog.records] == [
        "aiortc 9.9.9 is installed wher",
        "pyOpenSSL 9.9.9 is installed w",  # dtls calls OpenSSL through it
    ]


def test_a_role_stopped_by_a_missing_private_says_why(caplog: pytest.LogCaptureFixture) -> None:
    async def role() -> None:
        raise IncompatibleDependency("unwall needs aiortc 1.16.0 (found 1.17.0): ...")

    with caplog.at_level(logging.ERROR):
        assert cli._run(role()) == 1
    assert "unwall needs aiortc 1.16.0 (found 1.17.0)" in caplog.text


# -- the aiortc engine patches only when asked ----------------------------------------------

#: What the patches replace: (module, owner, attribute).
PATCH_TARGETS = [
    ("aioice.ice", "", "get_host_addresses"),
    ("aioice.mdns", "", "create_mdns_protocol"),
    ("aioice.ice", "Connection", "_prune_components"),
    ("aioice.ice", "Connection", "connect"),
    ("aioice.ice", "Connection", "build_request"),
    ("aioice.ice", "Connection", "_pair_remote_candidate"),
    ("aioice.ice", "StunProtocol", "request"),
    ("aiortc.rtcpeerconnection", "", "add_transport_description"),
    ("aiortc.rtcdtlstransport", "", "generate_certificate"),
    ("aiortc.rtcsctptransport", "", "USERDATA_MAX_LENGTH"),
    ("aiortc.rtcsctptransport", "RTCSctpTransport", "_mark_received"),
    ("aiortc.rtcsctptransport", "RTCSctpTransport", "_receive_forward_tsn_chunk"),
    ("aiortc.rtcsctptransport", "RTCSctpTransport", "_send_sack"),
    ("aiortc.rtcsctptransport", "RTCSctpTransport", "_receive_sack_chunk"),
    ("aiortc.rtcsctptransport", "RTCSctpTransport", "_cwnd"),
]

SNAPSHOT = """
import importlib, json, sys
targets = json.loads(sys.argv[1])
import aioice.ice, aioice.mdns, aioice.stun, aiortc.rtcdtlstransport, aiortc.rtcsctptransport

def snapshot():
    values = []
    for module, owner, name in targets:
        where = importlib.import_module(module)
        if owner:
            where = getattr(where, owner)
        values.append(getattr(where, name, None))
    values.append([p.openssl_profile for p in aiortc.rtcdtlstransport.SRTP_PROFILES])
    values.append("GOOG-NETWORK-INFO" in aioice.stun.ATTRIBUTES_BY_NAME)
    return values

def same(a, b):
    return [x is y or x == y for x, y in zip(a, b)]

stock = snapshot()
import unwall.transport.aiortc_engine
from unwall.transport.aiortc_engine import dtls, engine, ice, sctp, sdp, turn
imported = snapshot()
engine.install_patches()
patched = snapshot()
engine.install_patches()
ice.install(); sctp.install()
again = snapshot()
print(json.dumps({"import": same(stock, imported), "install": same(stock, patched),
                  "again": same(patched, again)}))
"""


def test_importing_the_engine_patches_nothing_and_install_patches_all_once() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SNAPSHOT, json.dumps(PATCH_TARGETS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    result = json.loads(out)
    count = len(PATCH_TARGETS) + 2
    assert result["import"] == [True] * count  # importing changed nothing
    assert result["install"] == [False] * count  # install_patches changed all of it
    assert result["again"] == [True] * count  # and only once


ATOMIC = """
import aioice.ice, aiortc.rtcsctptransport
from unwall.transport.aiortc_engine import engine
from unwall.transport.internals import IncompatibleDependency
stock = aioice.ice.get_host_addresses
del aiortc.rtcsctptransport.RTCSctpTransport._mark_received
try:
    engine.install_patches()
except IncompatibleDependency as exc:
    print(exc)
print(aioice.ice.get_host_addresses is stock)
"""


def test_install_patches_checks_every_module_before_patching_any() -> None:
    out = subprocess.run(
        [sys.executable, "-c", ATOMIC], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    assert out[0].startswith("unwall needs aiortc ")
    assert "RTCSctpTransport._mark_received is gone" in out[0]
    assert out[1] == "True"  # aioice (patched first) is untouched: sctp's check ran before
