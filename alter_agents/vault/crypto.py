"""Secrets at rest: AES-256-GCM, each ciphertext bound to its row by associated data.

A grant's credential is bound to the grant id, its owner and its provider (`grant_binding`), so a
ciphertext copied into another row, or a row whose owner or provider was rewritten, does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from alter_agents.errors import VaultKeyError

_VERSION = b"\x01"
_NONCE = 12


def generate_key() -> str:
    """A new key in the format `ALTER_VAULT_KEY` expects (URL-safe base64 of 32 random bytes)."""
    return base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=256)).decode()


@functools.lru_cache(maxsize=4096)
def grant_binding(grant_id: str, owner: str, provider: str) -> str:
    """The associated data of a grant's credential: the row it belongs to, unambiguously encoded."""
    return json.dumps(["alter-grant-v2", grant_id, owner, provider], separators=(",", ":"))


def _decode_key(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip().encode() + b"==")
    except (binascii.Error, ValueError) as exc:
        raise VaultKeyError("ALTER_VAULT_KEY is not valid URL-safe base64.") from exc
    if len(raw) != 32:
        raise VaultKeyError(f"ALTER_VAULT_KEY must decode to 32 bytes, not {len(raw)}.")
    return raw


def read_key_file(key_file: Path) -> str | None:
    """The key stored in `key_file`, or None when there is no such file."""
    try:
        text = key_file.read_text("utf-8").strip()
    except FileNotFoundError:
        return None
    _decode_key_file(text, key_file)
    return text


def _decode_key_file(text: str, key_file: Path) -> None:
    try:
        _decode_key(text)
    except VaultKeyError as exc:
        raise VaultKeyError(f"The vault key file {key_file} is not a valid key: {exc.message}") from None


def create_key_file(key_file: Path) -> str:
    """Create `key_file` (0600, in a 0700 directory) with a new key, atomically.

    The key is written to a temporary file first and linked into place, so a concurrent reader never
    sees a partial file; when another process created the file first, its key is returned instead.
    """
    make_private_dir(key_file.parent)
    new = generate_key()
    temp = key_file.with_name(f".{key_file.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(new + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, key_file)
        except FileExistsError:
            winner = read_key_file(key_file)
            if winner is None:  # deleted again between the two calls: nothing sane to return
                raise VaultKeyError(f"The vault key file {key_file} vanished while it was created.") from None
            return winner
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return new


def make_private_dir(path: Path) -> None:
    """Create a directory readable by its owner only (0700); an existing one is left as it is."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)


def load_or_create_key(key: str | None, key_file: Path) -> str:
    """The explicit key, else the key file (created with 0600 on first use)."""
    if key:
        return key
    return read_key_file(key_file) or create_key_file(key_file)


def derive(key: str, purpose: bytes) -> bytes:
    """A key for one purpose (the audit chain, sealed states), derived from the vault key, never the key itself."""
    import hashlib
    import hmac

    return hmac.new(_decode_key(key), purpose, hashlib.sha256).digest()


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

    def try_decrypt(self, blob: bytes, aad: str) -> bytes | None:
        """Plaintext, or None when `blob` was not sealed with this key for `aad`."""
        if not blob.startswith(_VERSION):
            return None
        try:
            return self._aead.decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], aad.encode())
        except InvalidTag:
            return None
