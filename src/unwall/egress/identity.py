"""The egress's long-term identity: an ECDSA P-256 key and a self-signed certificate.

Clients do not trust certificate authorities here: they pin the key (see
`unwall.transport.quic.spki_pin`), so the certificate is only a container for the key and
can be re-issued without changing the pin.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from unwall.transport.quic import key_pin, spki_pin

KEY_FILE = "egress-key.pem"
CERT_FILE = "egress-cert.pem"
#: the secret the operator's brokers and egresses share (protocol.md §3.1), made by keygen
SECRET_FILE = "report-secret"


class IdentityError(Exception):
    pass


@dataclass(frozen=True)
class EgressIdentity:
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def pin(self) -> str:
        return spki_pin(self.certificate)


def generate_identity() -> EgressIdentity:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unwall-egress")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("unwall-egress")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return EgressIdentity(certificate, key)


def save_identity(identity: EgressIdentity, directory: Path, *, overwrite: bool = False) -> None:
    """Write key (0600) and certificate (0644) into `directory` (created 0700), whatever
    the umask: the mode is set on the file, not asked of open()."""
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    if created:
        os.chmod(directory, 0o700)
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    if not overwrite and (key_path.exists() or cert_path.exists()):
        raise IdentityError(
            f"{key_path} already exists; pass --force to replace it "
            "(clients pinned to the old key will stop working)"
        )
    key_pem = identity.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when replacing a file that had looser permissions
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_pem)
    fd = os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.fchmod(fd, 0o644)  # the certificate is public; others may read it, never write it
    with os.fdopen(fd, "wb") as handle:
        handle.write(identity.certificate.public_bytes(serialization.Encoding.PEM))


def load_identity(directory: Path) -> EgressIdentity:
    """The egress's key and certificate; IdentityError when missing, unreadable,
    mismatched, or when the key is open to other users (the key is the egress's identity:
    whoever reads it can pose as this egress to every client)."""
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    with contextlib.suppress(FileNotFoundError):
        mode = key_path.stat().st_mode & 0o777
        if mode & 0o077:
            raise IdentityError(
                f"{key_path} can be read or written by other users (mode {mode:04o}); "
                f"fix it with: chmod 600 {key_path}"
            )
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError as exc:
        raise IdentityError(
            f"no egress key in {directory} ({exc.filename} is missing); "
            f"create one with: unwall egress keygen --key-dir {directory}"
        ) from exc
    except (ValueError, TypeError) as exc:  # TypeError: the key is password-protected
        raise IdentityError(f"cannot read the egress key in {directory}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{key_path} is not an EC private key")
    if spki_pin(certificate) != key_pin(key.public_key()):
        raise IdentityError(f"{cert_path} does not belong to the key in {key_path}")
    return EgressIdentity(certificate, key)


def make_secret(directory: Path) -> bool:
    """Write a new shared secret (0600) into `directory` unless one is there; True if made."""
    path = directory / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    return True


def load_secret(directory: Path) -> str | None:
    """The shared secret keygen wrote into `directory` (None: there is none); IdentityError
    when other users may read it."""
    path = directory / SECRET_FILE
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        return None
    if mode & 0o077:
        raise IdentityError(
            f"{path} can be read or written by other users (mode {mode:04o}); "
            f"fix it with: chmod 600 {path}"
        )
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"cannot read {path}: {exc}") from exc
