"""Enrollment tokens and device certificates in the registry database.

A token reads ``ef1.<id>.<secret>.<pin>``: ``id`` finds its row, ``secret`` (32 random
bytes, base64url) proves possession and is stored only as its SHA-256, and ``pin`` is the
SHA-256 fingerprint of the controller's TLS certificate, which the device checks before it
sends anything (``edgefleet.agent.enroll``). A token is single use and expires.

``CertificateRegistry`` records every certificate the device CA issues, so the controller
can refuse revoked ones: gRPC's TLS stack checks the chain but knows no revocation list.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

import sqlalchemy as sa

from edgefleet.controller.db import Database
from edgefleet.controller.errors import EnrollmentError
from edgefleet.controller.models import DeviceCertificateRow, EnrollmentTokenRow, utc_now
from edgefleet.controller.pki import IssuedCertificate
from edgefleet.errors import InvalidInputError

__all__ = [
    "SUPERSEDED",
    "TOKEN_PREFIX",
    "CertificateRegistry",
    "NewToken",
    "format_token",
    "parse_token",
]

TOKEN_PREFIX = "ef1"
# Revocation reason of a certificate replaced by the device's next enrollment; such a
# device is not revoked, so the revocation check skips these.
SUPERSEDED = "superseded by a new enrollment"
_TOKEN = re.compile(r"ef1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})(?:\.([A-Za-z0-9_-]{43}))?")


@dataclasses.dataclass(frozen=True, slots=True)
class NewToken:
    """A token just created; ``token`` is shown to the operator once and never stored."""

    token: str
    token_id: str
    expires_at: datetime
    device_id: str | None


def format_token(token_id: str, secret: str, pin: str | None) -> str:
    parts = [TOKEN_PREFIX, token_id, secret] + ([pin] if pin else [])
    return ".".join(parts)


def parse_token(token: str) -> tuple[str, str, str | None]:
    """Split a token into its id, secret and server pin (None when absent).

    Raises ``InvalidInputError`` for anything that is not an edgefleet token.
    """
    match = _TOKEN.fullmatch(token.strip())
    if match is None:
        raise InvalidInputError(
            "invalid enrollment token: expected ef1.<id>.<secret>.<pin> as printed by "
            "`edgefleet controller token create`"
        )
    return match.group(1), match.group(2), match.group(3)


def _secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


class CertificateRegistry:
    """Enrollment tokens and issued certificates; see the module docstring."""

    def __init__(self, database: Database) -> None:
        self._database = database

    # -- tokens -----------------------------------------------------------------------

    def create_token(
        self, *, ttl: timedelta, pin: str | None, device_id: str | None = None
    ) -> NewToken:
        """Create a single-use token valid for ``ttl``, optionally for one device id only."""
        if ttl <= timedelta(0):
            raise InvalidInputError(f"token lifetime must be positive, got {ttl}")
        token_id = secrets.token_hex(8)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        now = utc_now()
        row = EnrollmentTokenRow(
            id=token_id,
            secret_sha256=_secret_digest(secret),
            device_id=device_id,
            created_at=now,
            expires_at=now + ttl,
        )
        with self._database.session() as session:
            session.add(row)
        return NewToken(
            token=format_token(token_id, secret, pin),
            token_id=token_id,
            expires_at=row.expires_at,
            device_id=device_id,
        )

    def redeem_token(self, token: str, *, device_id: str, now: datetime | None = None) -> str:
        """Mark the token used by ``device_id``; returns its id.

        Raises ``EnrollmentError`` when the token is unknown, wrong, used, expired or
        bound to another device.
        """
        now = now or utc_now()
        try:
            token_id, secret, _pin = parse_token(token)
        except InvalidInputError as exc:
            raise _rejected("malformed token") from exc
        with self._database.session() as session:
            row = session.get(EnrollmentTokenRow, token_id, with_for_update=True)
            if row is None:
                raise _rejected(f"token {token_id} does not exist")
            if not hmac.compare_digest(row.secret_sha256, _secret_digest(secret)):
                raise _rejected(f"token {token_id} has a wrong secret")
            if row.used_at is not None:
                raise _rejected(f"token {token_id} was already used by device {row.used_by}")
            if row.expires_at <= now:
                raise _rejected(f"token {token_id} expired at {row.expires_at.isoformat()}")
            if row.device_id is not None and row.device_id != device_id:
                raise _rejected(f"token {token_id} is for device {row.device_id}")
            # The conditional update makes two concurrent redemptions race safely: only
            # one of them changes the row.
            updated = session.execute(
                sa.update(EnrollmentTokenRow)
                .where(EnrollmentTokenRow.id == token_id, EnrollmentTokenRow.used_at.is_(None))
                .values(used_at=now, used_by=device_id)
            )
            if updated.rowcount != 1:  # type: ignore[attr-defined]
                raise _rejected(f"token {token_id} was already used")
            return token_id

    # -- certificates -------------------------------------------------------------------

    def add_certificate(self, issued: IssuedCertificate) -> list[str]:
        """Record ``issued`` and revoke the device's earlier certificates; returns their serials."""
        now = utc_now()
        with self._database.session() as session:
            earlier = list(
                session.scalars(
                    sa.select(DeviceCertificateRow).where(
                        DeviceCertificateRow.device_id == issued.device_id,
                        DeviceCertificateRow.revoked_at.is_(None),
                    )
                )
            )
            for row in earlier:
                row.revoked_at = now
                row.revoked_reason = SUPERSEDED
            session.add(
                DeviceCertificateRow(
                    serial=issued.serial,
                    device_id=issued.device_id,
                    fingerprint=issued.fingerprint,
                    issued_at=now,
                    not_after=issued.not_after,
                    revoked_reason="",
                )
            )
            return [row.serial for row in earlier]

    def find_certificate(self, serial: str) -> DeviceCertificateRow | None:
        with self._database.session() as session:
            return session.get(DeviceCertificateRow, serial)

    def revoke_device(self, device_id: str, *, reason: str) -> int:
        """Revoke every unrevoked certificate of ``device_id``; returns how many."""
        with self._database.session() as session:
            result = session.execute(
                sa.update(DeviceCertificateRow)
                .where(
                    DeviceCertificateRow.device_id == device_id,
                    DeviceCertificateRow.revoked_at.is_(None),
                )
                .values(revoked_at=utc_now(), revoked_reason=reason)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def revoked_devices(self, *, since: datetime | None = None) -> set[str]:
        """Return revoked devices: an operator revoked a certificate of theirs after
        ``since`` (ever, when None), and they hold no unrevoked certificate since.
        """
        unrevoked = sa.select(DeviceCertificateRow.device_id).where(
            DeviceCertificateRow.revoked_at.is_(None)
        )
        query = sa.select(DeviceCertificateRow.device_id).where(
            DeviceCertificateRow.revoked_at.is_not(None),
            DeviceCertificateRow.revoked_reason != SUPERSEDED,
            DeviceCertificateRow.device_id.not_in(unrevoked),
        )
        if since is not None:
            query = query.where(DeviceCertificateRow.revoked_at > since)
        with self._database.session() as session:
            return set(session.scalars(query))


def _rejected(detail: str) -> EnrollmentError:
    return EnrollmentError("the enrollment token is invalid, used or expired", detail=detail)
