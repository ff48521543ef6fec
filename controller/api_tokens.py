"""Bearer tokens of the controller's HTTP API, stored in the registry database.

A token reads ``efa1.<id>.<secret>``: ``id`` (16 hex digits) finds its row and names the
token in logs and listings, and ``secret`` (``secrets.token_urlsafe(32)``, 256 random
bits) proves possession. Only the SHA-256 of the secret is stored, so a copy of the
database grants no access. A token has a role (``ApiTokenRole``): ``read`` tokens may send
GET requests, ``operator`` tokens any request. Revocation is immediate, because every
request reads the token's row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from edgefleet.controller.db import Database
from edgefleet.controller.errors import (
    ApiTokenRejectedError,
    ApiTokenRevokedError,
    UnknownApiTokenError,
)
from edgefleet.controller.models import ApiTokenRole, ApiTokenRow, utc_now
from edgefleet.errors import InvalidInputError

__all__ = [
    "API_TOKEN_PREFIX",
    "CREATE_COMMAND",
    "LAST_USED_RESOLUTION",
    "ApiTokenStore",
    "NewApiToken",
    "parse_api_token",
    "validate_token_id",
]

API_TOKEN_PREFIX = "efa1"
# The command that creates a token; error messages name it as the fix.
CREATE_COMMAND = "edgefleet controller api-token create NAME"
# last_used_at is written at most this often per token, so that a dashboard polling every
# few seconds does not turn each read into a database write.
LAST_USED_RESOLUTION = timedelta(minutes=1)

_TOKEN = re.compile(r"efa1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")
_TOKEN_ID = re.compile(r"[0-9a-f]{16}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclasses.dataclass(frozen=True, slots=True)
class NewApiToken:
    """A token just created; ``token`` is shown to the operator once and never stored."""

    token: str
    token_id: str
    name: str
    role: ApiTokenRole


def parse_api_token(token: str) -> tuple[str, str]:
    """Split a token into its id and secret; raises ``ApiTokenRejectedError`` if malformed."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise ApiTokenRejectedError(
            f"malformed API token: expected {API_TOKEN_PREFIX}.<id>.<secret>"
        )
    return match.group(1), match.group(2)


def validate_token_id(token_id: str) -> str:
    """Return ``token_id``; raises ``InvalidInputError`` unless it is 16 hex digits."""
    if not _TOKEN_ID.fullmatch(token_id):
        raise InvalidInputError(
            f"invalid API token id {token_id!r}: expected 16 hex digits as shown by "
            "`edgefleet controller api-token list`"
        )
    return token_id


def _secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


class ApiTokenStore:
    """Create, list, revoke and check HTTP API tokens; see the module docstring."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def create(self, name: str, *, role: ApiTokenRole) -> NewApiToken:
        """Create a token; the returned ``token`` is the only copy of its secret."""
        if not _NAME.fullmatch(name):
            raise InvalidInputError(
                f"invalid API token name {name!r}: use 1-64 letters, digits, '.', '_', '@' "
                "or '-', starting with a letter or digit, for example prometheus or alice"
            )
        role = ApiTokenRole(role)
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        with self._database.session() as session:
            session.add(
                ApiTokenRow(
                    id=token_id,
                    name=name,
                    role=role,
                    secret_sha256=_secret_digest(secret),
                    created_at=utc_now(),
                )
            )
        return NewApiToken(
            token=f"{API_TOKEN_PREFIX}.{token_id}.{secret}", token_id=token_id, name=name, role=role
        )

    def list(self) -> list[ApiTokenRow]:
        """Return every token, revoked ones included, oldest first."""
        with self._database.session() as session:
            query = sa.select(ApiTokenRow).order_by(ApiTokenRow.created_at, ApiTokenRow.id)
            return list(session.scalars(query))

    def revoke(self, token_id: str, *, now: datetime | None = None) -> ApiTokenRow:
        """Revoke a token; the next request that presents it gets 401.

        Raises ``UnknownApiTokenError`` for an unknown id and ``ApiTokenRevokedError`` for
        a token revoked before.
        """
        validate_token_id(token_id)
        with self._database.session() as session:
            row = session.get(ApiTokenRow, token_id, with_for_update=True)
            if row is None:
                raise UnknownApiTokenError(
                    f"no API token with id {token_id}; `edgefleet controller api-token list` "
                    "shows the ids"
                )
            if row.revoked_at is not None:
                raise ApiTokenRevokedError(
                    f"API token {token_id} ({row.name}) was already revoked at "
                    f"{row.revoked_at.isoformat(timespec='seconds')}"
                )
            row.revoked_at = now or utc_now()
            return row

    def authenticate(self, token: str, *, now: datetime | None = None) -> ApiTokenRow:
        """Return the row of a valid, unrevoked ``token`` and note its use.

        Raises ``ApiTokenRejectedError``, with the token id when the token names one.
        """
        token_id, secret = parse_api_token(token)
        now = now or utc_now()
        with self._database.session() as session:
            row = session.get(ApiTokenRow, token_id)
            # An unknown id and a wrong secret get the same message, so that a client
            # cannot tell which ids exist.
            if row is None or not hmac.compare_digest(row.secret_sha256, _secret_digest(secret)):
                raise ApiTokenRejectedError("unknown API token", token_id=token_id)
            if row.revoked_at is not None:
                raise ApiTokenRejectedError("the API token was revoked", token_id=token_id)
            if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
                self._mark_used(session, token_id, now)
            return row

    @staticmethod
    def _mark_used(session: Session, token_id: str, now: datetime) -> None:
        # Conditional, so that concurrent requests with one token write it once a minute.
        session.execute(
            sa.update(ApiTokenRow)
            .where(
                ApiTokenRow.id == token_id,
                sa.or_(
                    ApiTokenRow.last_used_at.is_(None),
                    ApiTokenRow.last_used_at <= now - LAST_USED_RESOLUTION,
                ),
            )
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
