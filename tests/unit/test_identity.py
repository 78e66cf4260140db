"""The egress identity: generate, save, load, and the pin a client checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from unwall.egress.identity import (
    CERT_FILE,
    KEY_FILE,
    EgressIdentity,
    IdentityError,
    generate_identity,
    load_identity,
    save_identity,
)
from unwall.transport.quic import spki_pin
from unwall.wire.bridgeline import BridgeLine
from unwall.wire.pin import normalize_pin


@pytest.fixture(scope="module")
def identity() -> EgressIdentity:
    return generate_identity()


@pytest.fixture(scope="module")
def other() -> EgressIdentity:
    return generate_identity()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def key_pem(identity: EgressIdentity) -> bytes:
    return identity.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(identity: EgressIdentity) -> bytes:
    return identity.certificate.public_bytes(serialization.Encoding.PEM)


# -- generate --------------------------------------------------------------------------------


def test_generate(identity: EgressIdentity) -> None:
    assert isinstance(identity.private_key, ec.EllipticCurvePrivateKey)
    assert isinstance(identity.private_key.curve, ec.SECP256R1)
    public = identity.certificate.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == identity.private_key.public_key().public_numbers()
    assert identity.certificate.not_valid_before_utc < identity.certificate.not_valid_after_utc


def test_pin_form(identity: EgressIdentity) -> None:
    pin = identity.pin
    assert pin.startswith("sha256:")
    assert len(pin) == len("sha256:") + 43
    assert normalize_pin(pin) == pin
    assert pin == spki_pin(identity.certificate)
    # a bridge line carries it unchanged
    line = BridgeLine(broker="http://127.0.0.1:8080/", pin=pin).format()
    assert BridgeLine.parse(line).pin == pin


def test_every_identity_is_new(identity: EgressIdentity, other: EgressIdentity) -> None:
    assert identity.pin != other.pin
    assert identity.certificate.serial_number != other.certificate.serial_number


# -- save and load ---------------------------------------------------------------------------


def test_round_trip(identity: EgressIdentity, tmp_path: Path) -> None:
    save_identity(identity, tmp_path)
    loaded = load_identity(tmp_path)
    assert loaded.pin == identity.pin
    assert loaded.certificate == identity.certificate
    assert key_pem(loaded) == key_pem(identity)


def test_pin_is_stable_across_loads(identity: EgressIdentity, tmp_path: Path) -> None:
    save_identity(identity, tmp_path)
    pins = {load_identity(tmp_path).pin for _ in range(3)}
    assert pins == {identity.pin}


def test_save_creates_missing_directories(identity: EgressIdentity, tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "keys"
    save_identity(identity, directory)
    assert (directory / KEY_FILE).is_file()
    assert (directory / CERT_FILE).is_file()
    assert load_identity(directory).pin == identity.pin


def test_files_are_pem(identity: EgressIdentity, tmp_path: Path) -> None:
    save_identity(identity, tmp_path)
    assert (tmp_path / KEY_FILE).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / CERT_FILE).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    x509.load_pem_x509_certificate((tmp_path / CERT_FILE).read_bytes())


def test_key_file_mode_is_0600(identity: EgressIdentity, tmp_path: Path) -> None:
    old = os.umask(0o000)  # even with a permissive umask
    try:
        save_identity(identity, tmp_path / "keys")
    finally:
        os.umask(old)
    assert mode(tmp_path / "keys" / KEY_FILE) == 0o600


def test_overwritten_key_file_mode_is_0600(
    identity: EgressIdentity, other: EgressIdentity, tmp_path: Path
) -> None:
    save_identity(identity, tmp_path)
    (tmp_path / KEY_FILE).chmod(0o644)
    save_identity(other, tmp_path, overwrite=True)
    assert mode(tmp_path / KEY_FILE) == 0o600


@pytest.mark.parametrize("existing", [KEY_FILE, CERT_FILE])
def test_refuses_to_overwrite(
    existing: str, identity: EgressIdentity, other: EgressIdentity, tmp_path: Path
) -> None:
    save_identity(identity, tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in (KEY_FILE, CERT_FILE)}
    (tmp_path / ({KEY_FILE, CERT_FILE} - {existing}).pop()).unlink()
    with pytest.raises(IdentityError, match="--force") as caught:
        save_identity(other, tmp_path)
    assert "already exists" in str(caught.value)
    # nothing was touched
    assert (tmp_path / existing).read_bytes() == before[existing]


def test_refuses_to_overwrite_keeps_the_pin(
    identity: EgressIdentity, other: EgressIdentity, tmp_path: Path
) -> None:
    save_identity(identity, tmp_path)
    with pytest.raises(IdentityError):
        save_identity(other, tmp_path)
    assert load_identity(tmp_path).pin == identity.pin


def test_overwrite_replaces(
    identity: EgressIdentity, other: EgressIdentity, tmp_path: Path
) -> None:
    save_identity(identity, tmp_path)
    save_identity(other, tmp_path, overwrite=True)
    assert load_identity(tmp_path).pin == other.pin
    assert mode(tmp_path / KEY_FILE) == 0o600


# -- load errors -----------------------------------------------------------------------------


def test_missing_directory_names_keygen(tmp_path: Path) -> None:
    directory = tmp_path / "no-such-dir"
    with pytest.raises(IdentityError) as caught:
        load_identity(directory)
    message = str(caught.value)
    assert "unwall egress keygen" in message
    assert f"--key-dir {directory}" in message


def test_empty_directory_names_keygen(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="unwall egress keygen"):
        load_identity(tmp_path)


@pytest.mark.parametrize("missing", [KEY_FILE, CERT_FILE])
def test_one_file_missing(missing: str, identity: EgressIdentity, tmp_path: Path) -> None:
    save_identity(identity, tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(IdentityError, match="unwall egress keygen") as caught:
        load_identity(tmp_path)
    assert missing in str(caught.value)


def test_mismatched_certificate_and_key(
    identity: EgressIdentity, other: EgressIdentity, tmp_path: Path
) -> None:
    save_identity(identity, tmp_path)
    (tmp_path / CERT_FILE).write_bytes(cert_pem(other))
    with pytest.raises(IdentityError, match="does not belong to the key"):
        load_identity(tmp_path)


def test_mismatched_key_and_certificate(
    identity: EgressIdentity, other: EgressIdentity, tmp_path: Path
) -> None:
    save_identity(identity, tmp_path)
    (tmp_path / KEY_FILE).write_bytes(key_pem(other))
    with pytest.raises(IdentityError, match="does not belong"):
        load_identity(tmp_path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        (KEY_FILE, b""),
        (KEY_FILE, b"not a key\n"),
        (KEY_FILE, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        (CERT_FILE, b""),
        (CERT_FILE, b"not a certificate\n"),
    ],
)
def test_corrupt_files(name: str, content: bytes, identity: EgressIdentity, tmp_path: Path) -> None:
    save_identity(identity, tmp_path)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(IdentityError, match="cannot read the egress key"):
        load_identity(tmp_path)


def test_certificate_in_place_of_key(identity: EgressIdentity, tmp_path: Path) -> None:
    save_identity(identity, tmp_path)
    (tmp_path / KEY_FILE).write_bytes(cert_pem(identity))
    with pytest.raises(IdentityError):
        load_identity(tmp_path)


def test_non_ec_key(identity: EgressIdentity, tmp_path: Path) -> None:
    save_identity(identity, tmp_path)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / KEY_FILE).write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(IdentityError, match="not an EC private key"):
        load_identity(tmp_path)


def test_encrypted_key_is_refused(identity: EgressIdentity, tmp_path: Path) -> None:
    save_identity(identity, tmp_path)
    (tmp_path / KEY_FILE).write_bytes(
        identity.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(IdentityError):
        load_identity(tmp_path)


# -- file modes (issue 11, row 8) ------------------------------------------------------------


def test_modes_do_not_follow_the_umask(identity: EgressIdentity, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        save_identity(identity, tmp_path / "keys")
    finally:
        os.umask(old)
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "keys" / "egress-key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys" / "egress-cert.pem").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_others_can_read_is_refused(
    identity: EgressIdentity, tmp_path: Path, mode: int
) -> None:
    save_identity(identity, tmp_path)
    key = tmp_path / "egress-key.pem"
    key.chmod(mode)
    with pytest.raises(IdentityError, match=f"chmod 600 {key}"):
        load_identity(tmp_path)
    key.chmod(0o600)
    assert load_identity(tmp_path).pin == identity.pin
