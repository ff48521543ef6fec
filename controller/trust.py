"""The controller's trust anchor: manifest signing, the device CA, enrollment and peer checks.

``ControllerTrust`` owns everything in ``<data dir>/trust/``: the manifest signing key
(always, so even a plaintext controller signs every manifest), and in secure mode the
device CA and the controller's TLS certificate (``edgefleet.controller.pki``).

Secure mode runs two gRPC ports:

- the fleet port (``--grpc-port``) requires a client certificate issued by the device CA
  (mutual TLS). Each RPC is then bound to the certificate: ``authenticate`` rejects a
  revoked or unknown certificate, and a request that names another device id;
- the enrollment port (``--enroll-port``) is server-TLS only and serves nothing but
  ``EnrollmentService.Enroll``, which trades a one-time token and a CSR for a certificate.

gRPC for Python cannot ask for a client certificate without also requiring one, so the two
cannot share a port. Keeping enrollment apart also means the fleet port never serves a
peer without a certificate.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from edgefleet.controller.enrollment import CertificateRegistry, NewToken
from edgefleet.controller.errors import (
    AuthenticationError,
    ControllerStateError,
    EnrollmentError,
    IdentityMismatchError,
)
from edgefleet.controller.models import EventKind, utc_now
from edgefleet.controller.mosquitto import MosquittoCredentials
from edgefleet.controller.pki import (
    DEFAULT_SERVER_NAME,
    CertificateAuthority,
    ServerCertificate,
    device_id_of,
)
from edgefleet.controller.signing import ManifestSigner
from edgefleet.errors import InvalidInputError
from edgefleet.ids import validate_device_id
from edgefleet.protos.v1 import fleet_pb2

if TYPE_CHECKING:
    from edgefleet.controller.registry import Registry

__all__ = ["ControllerTrust"]

logger = logging.getLogger(__name__)


class ControllerTrust:
    """Signing, CA, enrollment and peer authentication; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        *,
        registry: Registry,
        certificates: CertificateRegistry,
        manifest_ttl_s: float,
        certificate_validity: timedelta,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        self.signer = ManifestSigner(directory, ttl_s=manifest_ttl_s)
        self.certificates = certificates
        self.certificate_validity = certificate_validity
        self.broker_credentials: MosquittoCredentials | None = None
        self._registry = registry
        self._ca: CertificateAuthority | None = None
        self._server: ServerCertificate | None = None
        self._tls = False

    # -- PKI --------------------------------------------------------------------------

    def load_pki(self, server_names: tuple[str, ...] = ()) -> None:
        """Create (or load) the device CA and the controller's TLS certificate."""
        if self._ca is None:
            self._ca = CertificateAuthority(self.directory)
            self._server = ServerCertificate(self.directory, names=server_names)

    def enable_tls(self, server_names: tuple[str, ...] = ()) -> None:
        """Load the PKI and require a client certificate on every fleet RPC."""
        self.load_pki(server_names)
        self._tls = True

    @property
    def tls_enabled(self) -> bool:
        """Whether the fleet port serves mutual TLS, so that RPCs must be authenticated."""
        return self._tls

    @property
    def ca(self) -> CertificateAuthority:
        if self._ca is None:
            raise ControllerStateError("the PKI is not loaded; serve with --tls")
        return self._ca

    @property
    def server_certificate(self) -> ServerCertificate:
        if self._server is None:
            raise ControllerStateError("the PKI is not loaded; serve with --tls")
        return self._server

    def fleet_credentials(self):  # -> grpc.ServerCredentials
        """Mutual TLS: the controller's certificate, and client certificates from the CA."""
        import grpc

        server = self.server_certificate
        return grpc.ssl_server_credentials(
            [(server.key_pem, server.pem)],
            root_certificates=self.ca.pem,
            require_client_auth=True,
        )

    def enrollment_credentials(self):  # -> grpc.ServerCredentials
        """Server TLS only: enrolling devices have no certificate yet."""
        import grpc

        server = self.server_certificate
        return grpc.ssl_server_credentials([(server.key_pem, server.pem)])

    # -- tokens and enrollment ----------------------------------------------------------

    def create_token(self, *, ttl: timedelta, device_id: str | None = None) -> NewToken:
        """Create a one-time enrollment token that pins the controller's TLS certificate."""
        if device_id is not None:
            validate_device_id(device_id)
        return self.certificates.create_token(
            ttl=ttl, pin=self.server_certificate.pin, device_id=device_id
        )

    def enroll(self, request: fleet_pb2.EnrollRequest) -> fleet_pb2.EnrollResponse:
        """Redeem the token, issue the device certificate and return what the device trusts.

        Raises ``EnrollmentError`` for a bad token and ``InvalidInputError`` for a bad
        device id or CSR; each rejection is recorded as an ACCESS_DENIED event.
        """
        device_id = validate_device_id(request.device_id)
        now = utc_now()
        try:
            # The certificate is issued before the token is spent, so a malformed CSR does
            # not use up the operator's token. Until add_certificate records it, it is
            # worthless: authenticate accepts recorded certificates only.
            issued = self.ca.issue(
                request.csr_pem, device_id=device_id, validity=self.certificate_validity, now=now
            )
            token_id = self.certificates.redeem_token(request.token, device_id=device_id, now=now)
        except EnrollmentError as exc:
            self.record_denied(device_id, f"enrollment rejected: {exc.detail}")
            raise
        except InvalidInputError as exc:
            self.record_denied(device_id, f"enrollment rejected: {exc}")
            raise
        superseded = self.certificates.add_certificate(issued)

        mqtt_password = ""
        if self.broker_credentials is not None:
            mqtt_password = self.broker_credentials.add_device(device_id)
        self._registry.record_event(
            EventKind.ENROLLED,
            device_id=device_id,
            reason=f"enrolled with token {token_id}",
            details={
                "serial": issued.serial,
                "fingerprint": issued.fingerprint,
                "not_after": issued.not_after.isoformat(),
                "superseded_serials": superseded,
            },
        )
        logger.info(
            "enrolled device %s: certificate %s valid until %s",
            device_id,
            issued.serial,
            issued.not_after.isoformat(),
        )
        return fleet_pb2.EnrollResponse(
            device_id=device_id,
            certificate_pem=issued.pem,
            ca_certificate_pem=self.ca.pem,
            server_certificate_pem=self.server_certificate.pem,
            server_name=DEFAULT_SERVER_NAME,
            manifest_keys=[self.signer.trusted_key],
            controller_time_ms=int(time.time() * 1000),
            mqtt_username=device_id if mqtt_password else "",
            mqtt_password=mqtt_password,
        )

    # -- peers ----------------------------------------------------------------------------

    def authenticate(self, certificate_pem: bytes | None, *, claimed_device_id: str) -> str:
        """Return the device id bound to a peer's verified certificate.

        gRPC has already checked the chain up to the CA and the validity period. This
        checks what gRPC cannot: that the controller issued the certificate and did not
        revoke it, and that it belongs to ``claimed_device_id``. Raises
        ``AuthenticationError`` or ``IdentityMismatchError`` and records ACCESS_DENIED.
        """
        try:
            if not certificate_pem:
                raise AuthenticationError("the peer presented no client certificate")
            certificate = x509.load_pem_x509_certificate(certificate_pem)
            serial = format(certificate.serial_number, "x")
            row = self.certificates.find_certificate(serial)
            if row is None:
                raise AuthenticationError(f"certificate {serial} was not issued by this controller")
            if row.revoked_at is not None:
                raise AuthenticationError(
                    f"certificate {serial} of device {row.device_id} was revoked "
                    f"({row.revoked_reason or 'no reason given'})"
                )
            device_id = device_id_of(certificate)
            if device_id != row.device_id:
                raise AuthenticationError(
                    f"certificate {serial} names device {device_id}, issued to {row.device_id}"
                )
        except AuthenticationError as exc:
            self.record_denied(claimed_device_id, str(exc))
            raise
        except (ValueError, InvalidInputError) as exc:
            self.record_denied(claimed_device_id, f"unreadable client certificate: {exc}")
            raise AuthenticationError(f"unreadable client certificate: {exc}") from exc
        if claimed_device_id != device_id:
            message = (
                f"the certificate belongs to device {device_id}, but the request names "
                f"device {claimed_device_id!r}"
            )
            self.record_denied(claimed_device_id, message, certificate_device=device_id)
            raise IdentityMismatchError(message)
        return device_id

    def revoke(self, device_id: str, *, reason: str) -> int:
        """Revoke every certificate of ``device_id`` and its broker credentials."""
        count = self.certificates.revoke_device(device_id, reason=reason)
        if self.broker_credentials is not None:
            self.broker_credentials.remove_device(device_id)
        return count

    def record_denied(
        self, device_id: str | None, reason: str, *, certificate_device: str | None = None
    ) -> None:
        logger.warning("access denied for device %s: %s", device_id or "(unknown)", reason)
        details = {"certificate_device": certificate_device} if certificate_device else {}
        try:
            self._registry.record_event(
                EventKind.ACCESS_DENIED, device_id=device_id, reason=reason, details=details
            )
        except ControllerStateError:
            # Shutting down: the log line above is the record.
            return
