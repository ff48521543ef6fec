"""Manifest signing: the controller's Ed25519 key and the ``SignedManifest`` it produces.

The key is created on the controller's first start as ``<data dir>/trust/manifest-signing.key``
(PKCS#8 PEM, mode 0600), and its public half is exported next to it as
``manifest-signing.pub`` for operators who provision devices by hand. Devices receive the
public key at enrollment and check every manifest with ``edgefleet.agent.trust``.
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent.identity import write_private_file
from edgefleet.agent.trust import key_id_of
from edgefleet.controller.errors import ConfigError
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["ManifestSigner"]

KEY_FILE = "manifest-signing.key"
PUBLIC_KEY_FILE = "manifest-signing.pub"


class ManifestSigner:
    """Signs manifests with the key in ``directory``, creating the key on first use."""

    def __init__(self, directory: Path, *, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        key_path = directory / KEY_FILE
        if key_path.exists():
            try:
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"cannot read the manifest signing key {key_path}: {exc}"
                ) from exc
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError(f"{key_path} is not an Ed25519 private key")
        else:
            key = Ed25519PrivateKey.generate()
            write_private_file(
                key_path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        self._key = key
        self.key_id = key_id_of(key.public_key())
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        public_path = directory / PUBLIC_KEY_FILE
        if not public_path.exists() or public_path.read_bytes() != public_pem:
            public_path.write_bytes(public_pem)

    @property
    def trusted_key(self) -> fleet_pb2.TrustedKey:
        """The public key as devices store it."""
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return fleet_pb2.TrustedKey(key_id=self.key_id, public_key=raw)

    def sign(
        self,
        variant: fleet_pb2.VariantManifest,
        *,
        device_id: str,
        deployment_id: str,
        version: int,
        rollback: bool = False,
        now: float | None = None,
    ) -> fleet_pb2.SignedManifest:
        """Sign ``variant`` for one deployment to one device, valid for ``ttl_s`` from ``now``."""
        issued_at_ms = int((time.time() if now is None else now) * 1000)
        payload = fleet_pb2.ManifestPayload(
            variant=variant,
            device_id=device_id,
            deployment_id=deployment_id,
            version=version,
            issued_at_ms=issued_at_ms,
            expires_at_ms=issued_at_ms + int(self.ttl_s * 1000),
            rollback=rollback,
        ).SerializeToString(deterministic=True)
        return fleet_pb2.SignedManifest(
            payload=payload, key_id=self.key_id, signature=self._key.sign(payload)
        )
