"""Tickets and vouchers (unwall.wire.ticket, docs/protocol.md §3.1): what verifies and
what does not."""

from __future__ import annotations

import pytest

from unwall.wire import ticket
from unwall.wire.ticket import TicketError, Voucher

KEY = ticket.derive_key("the operator's secret")
NOW = 1_800_000_000.0
SECRET = bytes(range(32))


def test_a_ticket_verifies_under_its_key_within_its_window() -> None:
    text = ticket.mint(KEY, "offer-1", ticket.commit(SECRET), NOW)
    assert len(text) <= ticket.MAX_TICKET_TEXT
    made = ticket.verify(KEY, text, NOW + 60, ticket.RELAY_WINDOW)
    assert made == ticket.Ticket("offer-1", ticket.commit(SECRET), int(NOW))


def test_the_longest_offer_id_fits() -> None:
    text = ticket.mint(KEY, "o" * 128, ticket.RELAY, NOW)
    assert len(text) <= 255  # it travels behind a one-byte length (stream header)
    assert ticket.verify(KEY, text, NOW, 1).offer_id == "o" * 128


@pytest.mark.parametrize(
    ("key", "now", "why"),
    [
        (ticket.derive_key("another operator"), NOW, "not made by a broker"),
        (KEY, NOW + ticket.RELAY_WINDOW + 1, "too old"),
        (KEY, NOW - ticket.CLOCK_SKEW - 1, "from the future"),
    ],
)
def test_a_ticket_from_elsewhere_or_elsewhen_is_refused(key: bytes, now: float, why: str) -> None:
    text = ticket.mint(KEY, "offer-1", ticket.RELAY, NOW)
    with pytest.raises(TicketError, match=why):
        ticket.verify(key, text, now, ticket.RELAY_WINDOW)


def test_every_altered_byte_is_refused() -> None:
    text = ticket.mint(KEY, "offer-1", ticket.RELAY, NOW)
    raw = bytearray(ticket._unb64(text, "ticket"))
    for i in range(len(raw)):
        altered = bytearray(raw)
        altered[i] ^= 0x01
        with pytest.raises(TicketError):
            ticket.verify(KEY, ticket._b64(bytes(altered)), NOW, ticket.RELAY_WINDOW)


@pytest.mark.parametrize("text", ["", "not base64!", "A" * 300, "AAAA"])
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(TicketError):
        ticket.verify(KEY, text, NOW, ticket.RELAY_WINDOW)


def test_a_voucher_needs_the_secret_behind_the_tickets_commitment() -> None:
    text = ticket.mint(KEY, "offer-1", ticket.commit(SECRET), NOW)
    assert Voucher(text, SECRET).check(KEY, NOW + 3600).offer_id == "offer-1"
    with pytest.raises(TicketError, match="secret"):
        Voucher(text, bytes(32)).check(KEY, NOW)
    # The volunteer's relay ticket binds no secret: no voucher can be made of it.
    relay = ticket.mint(KEY, "offer-1", ticket.RELAY, NOW)
    with pytest.raises(TicketError, match="secret"):
        Voucher(relay, SECRET).check(KEY, NOW)


def test_commitments_round_trip_as_text() -> None:
    commitment = ticket.commit(SECRET)
    assert ticket.decode_commitment(ticket.encode_commitment(commitment)) == commitment
    with pytest.raises(ValueError):
        ticket.decode_commitment("AAAA")


def test_a_client_cannot_have_a_relay_ticket_minted_for_itself() -> None:
    """A relay's ticket binds 32 zero bytes; a client that sent that as its commitment
    would get one from the broker (and open relays with it): it is no commitment."""
    with pytest.raises(ValueError, match="zero"):
        ticket.decode_commitment(ticket.encode_commitment(ticket.RELAY))
