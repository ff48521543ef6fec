"""The controller's X.509 material: the device CA and the controller's TLS certificate.

Both live in ``<data dir>/trust/`` and are created on the first secure start::

    ca.key, ca.crt            device CA (EC P-256); it signs device certificates only
    server.key, server.crt    the controller's self-signed TLS certificate (EC P-256)

The two are separate on purpose. Devices trust exactly ``server.crt``, pinned at
enrollment through the SHA-256 fingerprint in the enrollment token, so no certificate the
device CA issues (a device's, say) can ever pass as the controller. The controller trusts
client certificates issued by ``ca.crt`` only.

Clocks: boards without a battery-backed clock boot at 1970 until NTP runs, and the TLS
stack inside gRPC checks the peer certificate's validity period against that clock with no
way to pass another time. The certificates a device checks (``server.crt``) therefore
start their validity at the Unix epoch. Nothing else is weakened: the controller checks
device certificates against its own clock, and those start at issue time.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.agent.identity import CONTROLLER_SERVER_NAME, write_private_file
from edgefleet.controller.errors import ConfigError
from edgefleet.errors import InvalidInputError
from edgefleet.ids import validate_device_id

__all__ = [
    "DEFAULT_SERVER_NAME",
    "CertificateAuthority",
    "IssuedCertificate",
    "ServerCertificate",
    "certificate_fingerprint",
    "device_id_of",
]

# Name in every controller certificate; agents verify the certificate against it.
DEFAULT_SERVER_NAME = CONTROLLER_SERVER_NAME
UNIX_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=3650)
# Device certificates are issued a little in the past to absorb clock skew between the
# controller replicas that check them.
DEVICE_BACKDATE = dt.timedelta(minutes=5)
_DEVICE_URI_PREFIX = "urn:edgefleet:device:"


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A device certificate just issued."""

    device_id: str
    serial: str  # lowercase hex
    fingerprint: str  # SHA-256 of the DER encoding, lowercase hex
    not_after: dt.datetime
    pem: bytes


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def device_id_of(certificate: x509.Certificate) -> str:
    """Return the device id of a device certificate (its subject common name)."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise InvalidInputError("the certificate has no single common name")
    return validate_device_id(str(names[0].value))


class CertificateAuthority:
    """The device CA in ``directory``, created on first use."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        key_path, cert_path = directory / "ca.key", directory / "ca.crt"
        if cert_path.exists():
            self._key = _load_private_key(key_path)
            self.certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        else:
            self._key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet device CA")])
            now = dt.datetime.now(dt.UTC)
            self.certificate = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(self._key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - DEVICE_BACKDATE)
                .not_valid_after(now + CA_VALIDITY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=False,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=True,
                        crl_sign=True,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                    critical=False,
                )
                .sign(self._key, hashes.SHA256())
            )
            write_private_file(key_path, _private_pem(self._key))
            cert_path.write_bytes(self.pem)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, csr_pem: bytes, *, device_id: str, validity: dt.timedelta, now: dt.datetime
    ) -> IssuedCertificate:
        """Issue a client certificate for ``device_id`` to the key of ``csr_pem``.

        Raises ``InvalidInputError`` when the CSR does not parse, its signature is invalid,
        its key is not EC P-256, or its common name is not ``device_id``.
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise InvalidInputError(
                f"the certificate signing request does not parse: {exc}"
            ) from None
        if not csr.is_signature_valid:
            raise InvalidInputError("the certificate signing request has an invalid signature")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise InvalidInputError("the device key must be an EC P-256 key")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [str(name.value) for name in names] != [device_id]:
            raise InvalidInputError(
                f"the certificate signing request must have common name {device_id!r}"
            )

        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DEVICE_BACKDATE)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(_DEVICE_URI_PREFIX + device_id)]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCertificate(
            device_id=device_id,
            serial=format(certificate.serial_number, "x"),
            fingerprint=certificate_fingerprint(certificate),
            not_after=certificate.not_valid_after_utc,
            pem=certificate.public_bytes(serialization.Encoding.PEM),
        )


class ServerCertificate:
    """The controller's self-signed TLS certificate in ``directory``, created on first use.

    ``names`` (DNS names or IP addresses) are added to ``DEFAULT_SERVER_NAME`` when the
    certificate is created. An existing certificate is kept as it is, because enrolled
    devices pinned it.
    """

    def __init__(self, directory: Path, *, names: Sequence[str] = ()) -> None:
        key_path, cert_path = directory / "server.key", directory / "server.crt"
        if cert_path.exists():
            self.key_pem = key_path.read_bytes()
            self.certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            return
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEFAULT_SERVER_NAME)])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            # From the Unix epoch: see the module docstring.
            .not_valid_before(UNIX_EPOCH)
            .not_valid_after(now + SERVER_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(_general_names([DEFAULT_SERVER_NAME, *names])),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        self.key_pem = _private_pem(key)
        write_private_file(key_path, self.key_pem)
        cert_path.write_bytes(self.pem)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def pin(self) -> str:
        """The SHA-256 fingerprint of the certificate, base64url without padding."""
        digest = hashlib.sha256(self.certificate.public_bytes(serialization.Encoding.DER))
        return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode("ascii")


def _general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the private key {path}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} is not an EC private key")
    return key
