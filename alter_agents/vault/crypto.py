"""Secrets at rest: AES-256-GCM, each ciphertext bound to its row by associated data."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from alter_agents.errors import VaultKeyError

_VERSION = b"\x01"
_NONCE = 12


def generate_key() -> str:
    """A new key in the format `ALTER_VAULT_KEY` expects (URL-safe base64 of 32 random bytes)."""
    return base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=256)).decode()


def _decode_key(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode() + b"==")
    except (binascii.Error, ValueError) as exc:
        raise VaultKeyError("ALTER_VAULT_KEY is not valid URL-safe base64.") from exc
    if len(raw) != 32:
        raise VaultKeyError(f"ALTER_VAULT_KEY must decode to 32 bytes, not {len(raw)}.")
    return raw


def load_or_create_key(key: str | None, key_file: Path) -> str:
    """The explicit key, else the key file (created with 0600 on first use)."""
    if key:
        return key
    if key_file.exists():
        return key_file.read_text("utf-8").strip()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    new = generate_key()
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(new + "\n")
    return new


class Cipher:
    """Encrypts credentials; `aad` ties a ciphertext to the row it belongs to."""

    def __init__(self, key: str) -> None:
        self._aead = AESGCM(_decode_key(key))

    def encrypt(self, plaintext: bytes, aad: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, aad.encode())

    def decrypt(self, blob: bytes, aad: str) -> bytes:
        if not blob.startswith(_VERSION):
            raise VaultKeyError("Stored secret has an unknown format.")
        nonce, body = blob[1 : 1 + _NONCE], blob[1 + _NONCE :]
        try:
            return self._aead.decrypt(nonce, body, aad.encode())
        except InvalidTag:
            raise VaultKeyError(
                "Cannot decrypt the vault: ALTER_VAULT_KEY (or the key file) is not the key this store "
                "was written with. Nothing was changed."
            ) from None
