"""The device identity (docs/security.md 1.1) and its proof to the signaling server (1.2).

A device is its ECDSA P-256 key: its id is derived from the public key, so nobody can claim
an id without the key, and no server has to remember who owns which id. The key's self-signed
certificate is the DTLS certificate of every peer connection, so viewers can pin it.

Files live in the state directory, created on first start (directory 0700, files 0600). An
existing identity is never replaced: anything unreadable or inconsistent is an IdentityError
that says what to do, because a new key is a new device id and breaks every share link.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from peerproxyd import b64u
from peerproxyd.errors import IdentityError, RegistrationError
from peerproxyd.trust.viewer_auth import sdp_fingerprint

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "Identity",
    "device_id_for",
    "identity_exists",
    "load",
    "load_or_create",
    "registration_message",
    "verify_registration",
]

logger = logging.getLogger(__name__)

KEY_FILE = "device.key"
CERT_FILE = "device.crt"
DEVICE_ID_LENGTH = 32
CERT_VALIDITY = datetime.timedelta(days=20 * 365 + 5)
REGISTER_CONTEXT = b"peerproxyd-register-v1\n"
CHALLENGE_SIZE = 32
MAX_KEY_TEXT = 256
"""b64u of a P-256 SPKI is 122 characters; anything much longer is refused before decoding."""
MAX_SIGNATURE_TEXT = 128
"""b64u of a DER ECDSA P-256 signature is at most 96 characters."""


def device_id_for(spki_der: bytes) -> str:
    """The device id of a public key: the first 32 characters of lowercase unpadded base32
    of sha256(SubjectPublicKeyInfo DER); 160 bits, `[a-z2-7]{32}`."""
    digest = hashlib.sha256(spki_der).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:DEVICE_ID_LENGTH]


def _spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class Identity:
    """A device's key and certificate, with everything derived from them."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)
    certificate: x509.Certificate = field(repr=False, compare=False)
    public_key_der: bytes = field(init=False, repr=False)
    """The SubjectPublicKeyInfo DER of the key (what the device id is derived from)."""
    device_id: str = field(init=False)
    fingerprint_bytes: bytes = field(init=False, repr=False)
    """sha256(certificate DER): the DTLS fingerprint; `b64u` of it goes in share links."""
    fingerprint: str = field(init=False)
    """The DTLS fingerprint in SDP form (see sdp_fingerprint())."""

    def __post_init__(self) -> None:
        der = _spki_der(self.private_key.public_key())
        digest = self.certificate.fingerprint(hashes.SHA256())
        object.__setattr__(self, "public_key_der", der)
        object.__setattr__(self, "device_id", device_id_for(der))
        object.__setattr__(self, "fingerprint_bytes", digest)
        object.__setattr__(self, "fingerprint", sdp_fingerprint(digest))

    def sign(self, data: bytes) -> bytes:
        """The DER ECDSA-SHA256 signature of `data`."""
        return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))

    def register_fields(self, challenge: str) -> dict[str, str]:
        """The `device`, `key` and `signature` fields of a register message (1.2)."""
        signature = self.sign(registration_message(challenge, self.device_id))
        return {
            "device": self.device_id,
            "key": b64u.encode(self.public_key_der),
            "signature": b64u.encode(signature),
        }

    def pem(self) -> tuple[bytes, bytes]:
        """The certificate and the (unencrypted PKCS#8) key in PEM."""
        key = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        return self.certificate.public_bytes(serialization.Encoding.PEM), key

    @classmethod
    def generate(cls) -> Identity:
        """A new identity, in memory only."""
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, _self_signed(key))


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """The certificate of `key`: self-signed, CN = device id, valid for 20 years."""
    name = x509.Name([
        x509.NameAttribute(x509.NameOID.COMMON_NAME, device_id_for(_spki_der(key.public_key())))
    ])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + CERT_VALIDITY)
        .sign(key, hashes.SHA256())
    )


# ----- state directory


def identity_exists(state_dir: Path) -> bool:
    return (state_dir / KEY_FILE).exists()


def load(state_dir: str | Path) -> Identity:
    """The identity in `state_dir`; IdentityError if there is none or it is unusable."""
    state_dir = Path(state_dir)
    key_path = state_dir / KEY_FILE
    if not key_path.exists():
        raise IdentityError(f"no device identity in {state_dir} (no {KEY_FILE})")
    key = _read_key(key_path)
    cert_path = state_dir / CERT_FILE
    if not cert_path.exists():
        raise IdentityError(f"{cert_path} is missing")
    return _pair(key, _read_cert(cert_path), cert_path)


def load_or_create(state_dir: str | Path) -> Identity:
    """The identity in `state_dir`, created there on first start.

    Creates the directory (0700) if needed and each file (0600) only where none exists, so a
    running identity is never overwritten. A key without a certificate (a first start that
    was cut short) gets its certificate; a certificate without a key is refused.
    """
    state_dir = Path(state_dir)
    key_path, cert_path = state_dir / KEY_FILE, state_dir / CERT_FILE
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise IdentityError(f"cannot create state directory {state_dir}: {exc.strerror}") from None
    if not state_dir.is_dir():
        raise IdentityError(f"state directory {state_dir} is not a directory")
    if key_path.exists() or key_path.is_symlink():
        key = _read_key(key_path)
    elif cert_path.exists():
        raise IdentityError(
            f"{cert_path} exists but {key_path} does not: the device key is lost. Restore "
            f"it from a backup, or delete {cert_path} to start over as a new device (a new "
            "device id: every share link must be made again)"
        )
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        if _write_new(key_path, key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )):
            logger.info("created a new device key in %s", key_path)
        else:  # another process created it first: use theirs
            key = _read_key(key_path)
    if cert_path.exists() or cert_path.is_symlink():
        cert = _read_cert(cert_path)
    else:
        cert = _self_signed(key)
        if not _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM)):
            cert = _read_cert(cert_path)
    identity = _pair(key, cert, cert_path)
    _warn_if_exposed(key_path)
    return identity


def _write_new(path: Path, data: bytes) -> bool:
    """Write `path` (0600) unless it exists; False if it does. A crash leaves no partial
    file: the data goes to a temporary file first, which is then hard-linked into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise IdentityError(f"cannot write {path}: {exc.strerror}") from None
    return True


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror}") from None


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise IdentityError(f"{path}: the key is encrypted; it must be unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise IdentityError(
            f"{path} is not a PEM private key (corrupt?). It is the device's identity: "
            "restore it from a backup rather than deleting it (a new key is a new device id)"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise IdentityError(f"{path}: the device key must be an ECDSA P-256 key")
    return key


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError:
        raise IdentityError(
            f"{path} is not a PEM certificate (corrupt?). Restore it from a backup, or delete "
            "it to have a new one made from the key (the device id stays, the DTLS "
            "fingerprint changes: share links must be made again)"
        ) from None


def _pair(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, cert_path: Path) -> Identity:
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or _spki_der(public) != _spki_der(
        key.public_key()
    ):
        raise IdentityError(f"{cert_path} is not the certificate of {KEY_FILE}")
    return Identity(key, cert)


def _warn_if_exposed(key_path: Path) -> None:
    try:
        mode = key_path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("%s is readable by others (mode %o); it should be 0600",
                       key_path, stat.S_IMODE(mode))


# ----- registration (docs/security.md 1.2)


def new_challenge() -> str:
    """A fresh registration challenge: b64u of 32 random bytes."""
    return b64u.encode(os.urandom(CHALLENGE_SIZE))


def registration_message(challenge: str, device_id: str) -> bytes:
    """What a device signs to register: `"peerproxyd-register-v1\\n" + challenge + "\\n" + id`."""
    return REGISTER_CONTEXT + challenge.encode() + b"\n" + device_id.encode()


def verify_registration(
    device_id: str, key_b64u: str, signature_b64u: str, challenge: str
) -> None:
    """Check a register message against the connection's challenge; RegistrationError
    naming the failed check otherwise. Cheap checks come first: the signature is verified
    only for a key the id is derived from."""
    if not isinstance(key_b64u, str) or len(key_b64u) > MAX_KEY_TEXT:
        raise RegistrationError("key is missing or too long")
    if not isinstance(signature_b64u, str) or len(signature_b64u) > MAX_SIGNATURE_TEXT:
        raise RegistrationError("signature is missing or too long")
    try:
        key_der = b64u.decode(key_b64u)
        signature = b64u.decode(signature_b64u)
    except ValueError:
        raise RegistrationError("key or signature is not base64url") from None
    try:
        key = serialization.load_der_public_key(key_der)
    except (ValueError, UnsupportedAlgorithm):
        raise RegistrationError("key is not a public key (SubjectPublicKeyInfo DER)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise RegistrationError("key is not a P-256 public key")
    if device_id_for(_spki_der(key)) != device_id:
        raise RegistrationError(f"device id {device_id[:64]} is not derived from this key")
    try:
        key.verify(signature, registration_message(challenge, device_id),
                   ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise RegistrationError(
            "signature does not verify (not made by this key for this connection's challenge)"
        ) from None
