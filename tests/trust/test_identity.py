"""peerproxyd.trust.identity: the device key, its id and certificate, and registration proofs."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from peerproxyd import b64u
from peerproxyd.errors import IdentityError, RegistrationError
from peerproxyd.trust import identity
from peerproxyd.trust.identity import (
    Identity,
    device_id_for,
    load_or_create,
    registration_message,
    verify_registration,
)


def test_device_id_is_32_chars_of_lowercase_base32_of_the_spki_hash() -> None:
    spki = b"not really DER, but any bytes hash"
    expected = base64.b32encode(hashlib.sha256(spki).digest()).decode().lower()[:32]
    assert device_id_for(spki) == expected
    assert re.fullmatch(r"[a-z2-7]{32}", expected)


def test_identity_fields() -> None:
    ident = Identity.generate()
    assert re.fullmatch(r"[a-z2-7]{32}", ident.device_id)
    assert ident.device_id == device_id_for(ident.public_key_der)
    spki = ident.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert ident.public_key_der == spki
    cert_der = ident.certificate.public_bytes(serialization.Encoding.DER)
    assert ident.fingerprint_bytes == hashlib.sha256(cert_der).digest()
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", ident.fingerprint)
    assert ident.fingerprint.replace(":", "").lower() == ident.fingerprint_bytes.hex()
    cn = ident.certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == ident.device_id
    validity = ident.certificate.not_valid_after_utc - ident.certificate.not_valid_before_utc
    assert validity.days >= 20 * 365
    ident.private_key.public_key().verify(
        ident.sign(b"data"), b"data", ec.ECDSA(hashes.SHA256())
    )


def test_first_start_creates_private_files(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    ident = load_or_create(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert sorted(os.listdir(state)) == ["device.crt", "device.key"]
    for name in ("device.crt", "device.key"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    key = serialization.load_pem_private_key((state / "device.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert b"BEGIN PRIVATE KEY" in (state / "device.key").read_bytes()  # PKCS#8
    assert (state / "device.crt").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert identity.identity_exists(state)
    assert identity.load(state) == ident


def test_reload_gives_the_same_identity(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = load_or_create(tmp_path)
    assert (again.device_id, again.fingerprint) == (first.device_id, first.fingerprint)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_two_state_dirs_are_two_devices(tmp_path: Path) -> None:
    assert load_or_create(tmp_path / "a").device_id != load_or_create(tmp_path / "b").device_id


def test_corrupt_key_is_refused_and_kept(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    (tmp_path / "device.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    with pytest.raises(IdentityError, match=r"device\.key is not a PEM private key \(corrupt\?\)"):
        load_or_create(tmp_path)
    assert (tmp_path / "device.key").read_bytes().endswith(b"garbage\n")


def test_corrupt_certificate_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    (tmp_path / "device.crt").write_text("nonsense")
    with pytest.raises(IdentityError, match=r"device\.crt is not a PEM certificate"):
        load_or_create(tmp_path)


def test_unreadable_key_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    (tmp_path / "device.key").unlink()
    (tmp_path / "device.key").mkdir()  # unreadable even for root
    with pytest.raises(IdentityError, match=r"cannot read .*device\.key: Is a directory"):
        load_or_create(tmp_path)


def test_certificate_without_key_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    (tmp_path / "device.key").unlink()
    with pytest.raises(IdentityError, match="the device key is lost"):
        load_or_create(tmp_path)
    assert not (tmp_path / "device.key").exists()


def test_key_without_certificate_gets_one(tmp_path: Path) -> None:
    first = load_or_create(tmp_path)
    (tmp_path / "device.crt").unlink()
    again = load_or_create(tmp_path)
    assert again.device_id == first.device_id
    assert stat.S_IMODE((tmp_path / "device.crt").stat().st_mode) == 0o600


def test_certificate_of_another_key_is_refused(tmp_path: Path) -> None:
    load_or_create(tmp_path / "a")
    load_or_create(tmp_path / "b")
    os.replace(tmp_path / "b" / "device.crt", tmp_path / "a" / "device.crt")
    with pytest.raises(IdentityError, match=r"device\.crt is not the certificate of device\.key"):
        load_or_create(tmp_path / "a")


def test_key_of_another_curve_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    tmp_path.joinpath("device.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(IdentityError, match="must be an ECDSA P-256 key"):
        load_or_create(tmp_path)


def test_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(IdentityError, match="state directory"):
        load_or_create(tmp_path / "state")


def test_load_without_identity_does_not_create_one(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no device identity"):
        identity.load(tmp_path / "none")
    assert not (tmp_path / "none").exists()


# ----- registration


def _fields(ident: Identity, challenge: str) -> tuple[str, str, str]:
    f = ident.register_fields(challenge)
    return f["device"], f["key"], f["signature"]


def test_registration_message_format() -> None:
    assert registration_message("Q0hBTA", "abc") == b"peerproxyd-register-v1\nQ0hBTA\nabc"


def test_good_registration_verifies() -> None:
    ident, challenge = Identity.generate(), identity.new_challenge()
    assert len(b64u.decode(challenge)) == 32
    verify_registration(*_fields(ident, challenge), challenge)


def test_wrong_key_for_the_id_is_refused() -> None:
    owner, thief, challenge = Identity.generate(), Identity.generate(), identity.new_challenge()
    _, key, signature = _fields(thief, challenge)
    with pytest.raises(RegistrationError, match="is not derived from this key") as info:
        verify_registration(owner.device_id, key, signature, challenge)
    assert info.value.code == "unauthorized"


def test_signature_by_another_key_is_refused() -> None:
    owner, thief, challenge = Identity.generate(), Identity.generate(), identity.new_challenge()
    device, key, _ = _fields(owner, challenge)
    _, _, signature = _fields(thief, challenge)
    with pytest.raises(RegistrationError, match="signature does not verify"):
        verify_registration(device, key, signature, challenge)


def test_replayed_signature_is_refused() -> None:
    owner = Identity.generate()
    seen = _fields(owner, identity.new_challenge())
    with pytest.raises(RegistrationError, match="signature does not verify"):
        verify_registration(*seen, identity.new_challenge())


@pytest.mark.parametrize(
    ("key", "signature", "reason"),
    [
        ("", "AAAA", "key is not a public key"),
        ("A" * 300, "AAAA", "key is missing or too long"),
        ("ab+/", "AAAA", "not base64url"),
        ("abc=", "AAAA", "not base64url"),
        ("OK", "A" * 200, "signature is missing or too long"),
    ],
)
def test_malformed_fields_are_refused(key: str, signature: str, reason: str) -> None:
    with pytest.raises(RegistrationError, match=reason):
        verify_registration("a" * 32, key, signature, identity.new_challenge())


def test_key_of_another_type_is_refused() -> None:
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(RegistrationError, match="not a P-256 public key"):
        verify_registration(device_id_for(other), b64u.encode(other), "AAAA", "c")


def test_b64u_is_strict() -> None:
    assert b64u.encode(b"\xfb\xff") == "-_8"
    assert b64u.decode("-_8") == b"\xfb\xff"
    for bad in ("-_9", "a", "ab=", "a b"):
        with pytest.raises(ValueError):
            b64u.decode(bad)
