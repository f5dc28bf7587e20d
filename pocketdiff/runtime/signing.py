"""Ed25519 signatures over a bundle's manifest (``cryptography``), so whoever can change a model file cannot
also make the bundle pass.

**What is signed:** the exact bytes of ``manifest.json`` as stored in the bundle (no re-serialisation, no
normalisation). The manifest lists every other file with its size and sha256, so the signature covers
them all. The signature (RFC 8032 Ed25519, 64 bytes) is stored beside it as ``manifest.json.sig``: 128
lowercase hex characters and a newline. A public key file holds the raw 32-byte Ed25519 public key as 64
lowercase hex characters and a newline; a private key file is PKCS#8 PEM (``pocketdiff keygen``).

The Kotlin, Swift and JavaScript ports verify the same bytes with their platform's Ed25519 (Java's
``Signature.getInstance("Ed25519")``, CryptoKit's ``Curve25519.Signing.PublicKey``, WebCrypto's
``Ed25519``); ``docs/export.md`` has a signed test vector.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pocketdiff.errors import PocketdiffError

SIGNATURE_FILE = "manifest.json.sig"
TRUSTED_KEY_ENV = "POCKETDIFF_TRUSTED_KEY"  # a public key file used when --trusted-key is not given
_HEX = re.compile(r"[0-9a-f]+")


def _hex_file(path: Path, n_bytes: int, what: str) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise PocketdiffError(f"cannot read {what} {path}: {exc}") from None
    if len(text) != 2 * n_bytes or not _HEX.fullmatch(text):
        raise PocketdiffError(f"{what} {path} must hold {2 * n_bytes} lowercase hex characters")
    return bytes.fromhex(text)


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_hex_file(Path(path), 32, "public key"))


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PocketdiffError(f"cannot read private key {path} (PKCS#8 PEM, unencrypted): {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PocketdiffError(f"private key {path} is not an Ed25519 key")
    return key


def public_key_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def keygen(out: str | Path) -> tuple[Path, Path]:
    """A new key pair: ``out`` (private, PKCS#8 PEM, mode 600) and ``out.pub`` (public, hex). Refuses to
    overwrite either."""
    out = Path(out)
    pub = out.with_name(out.name + ".pub")
    for p in (out, pub):
        if p.exists():
            raise PocketdiffError(f"{p} already exists; a key is never overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub.write_text(public_key_hex(key.public_key()) + "\n", encoding="ascii")
    return out, pub


def sign(manifest_bytes: bytes, key: Ed25519PrivateKey) -> str:
    """The signature file's content for ``manifest_bytes``."""
    return key.sign(manifest_bytes).hex() + "\n"


def verify(manifest_bytes: bytes, signature_path: Path, key: Ed25519PublicKey, bundle: Path) -> None:
    """Fail closed: a missing or malformed signature, or one that does not match these bytes under ``key``."""
    if not signature_path.is_file() or signature_path.is_symlink():
        raise PocketdiffError(f"bundle {bundle} is not signed ({SIGNATURE_FILE} is missing) but a trusted key was "
                              "given")
    signature = _hex_file(signature_path, 64, "signature")
    try:
        key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise PocketdiffError(f"bundle {bundle}: the manifest's signature does not verify with the trusted key "
                              "(signed by another key, or the manifest changed after signing)") from None


def trusted_key_path(given: str | Path | None) -> Path | None:
    """``--trusted-key``, else the ``POCKETDIFF_TRUSTED_KEY`` environment variable, else None."""
    value = given or os.environ.get(TRUSTED_KEY_ENV) or None
    return Path(value) if value else None
