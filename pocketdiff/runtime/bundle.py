"""Read an app bundle: ``manifest.json`` (schema: ``export/manifest.schema.json``), everything checked first.

A bundle lists *components* (name, role, target, file, precision, I/O specs), not three fixed slots,
so later methods can add theirs (a step-budget predictor, split UNets, exit heads, per-width UNets).
:func:`load_bundle` fails closed, in this order, before any model loads:

1. the manifest is read as bytes (a symlinked manifest is refused);
2. with a trusted Ed25519 key, its signature over those exact bytes must verify (``runtime/signing.py``);
3. its structure: every field the runtime reads, known roles and targets (``runtime/manifest.py``);
4. every path it names (files, components, tokenizer, test vectors) must stay inside the bundle, symlinks
   included, judged before anything outside is touched;
5. every component is covered by the checksums, and (``verify``) every listed file has its size and sha256.

Every failure is one :class:`PocketdiffError` naming the entry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.manifest import FORMAT_VERSION, check_manifest, resolve_inside
from pocketdiff.runtime.policies import runtime_roles
from pocketdiff.runtime.signing import SIGNATURE_FILE
from pocketdiff.runtime.signing import verify as verify_signature
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer

MANIFEST = "manifest.json"
__all__ = ["FORMAT_VERSION", "MANIFEST", "SIGNATURE_FILE", "Bundle", "BundleComponent", "load_bundle",
           "sha256_file", "verify_files"]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class BundleComponent:
    name: str
    role: str
    target: str
    path: str
    precision: str
    quantization: str | None = None
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    parity: dict | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Bundle:
    path: Path
    manifest: dict
    components: list[BundleComponent]
    signed_by: str | None = None  # the trusted public key (hex) the manifest verified with, if any

    def component(self, role: str, target: str) -> BundleComponent:
        for c in self.components:
            if c.role == role and c.target == target:
                return c
        have = sorted({f"{c.role}/{c.target}" for c in self.components})
        raise PocketdiffError(f"bundle {self.path} has no {role} for target {target!r}; it has: {', '.join(have)}")

    @property
    def targets(self) -> list[str]:
        return sorted({c.target for c in self.components})

    def file(self, rel: str) -> Path:
        """A path the manifest names, resolved inside the bundle (the manifest's paths were all checked)."""
        return resolve_inside(self.path, rel, rel)

    def tokenizer(self) -> CLIPBPETokenizer:
        """The tokenizer from the files the manifest names (and the special-tokens map beside the vocab, if
        the manifest lists it)."""
        t = self.manifest["tokenizer"]
        special = str(PurePosixPath(t["vocab"]).parent / "special_tokens_map.json")
        listed = {e["path"] for e in self.manifest["files"]}
        return CLIPBPETokenizer.from_files(self.file(t["vocab"]), self.file(t["merges"]),
                                           self.file(special) if special in listed else None)


def verify_files(root: Path, files: list[dict]) -> None:
    """Every listed file: a regular file inside the bundle, of its size and sha256."""
    for i, entry in enumerate(files):
        f = resolve_inside(root, entry["path"], f"manifest.files[{i}].path")
        if not f.is_file():
            raise PocketdiffError(f"bundle file {entry['path']} is missing from {root}")
        if f.stat().st_size != entry["bytes"]:
            raise PocketdiffError(f"bundle file {entry['path']} is truncated or altered: {f.stat().st_size} bytes, "
                                  f"manifest says {entry['bytes']}")
        if sha256_file(f) != entry["sha256"]:
            raise PocketdiffError(f"bundle file {entry['path']} fails its sha256 check (tampered or corrupt)")


def load_bundle(path: str | Path, verify: bool = True, trusted_key: Ed25519PublicKey | None = None) -> Bundle:
    """Read and check a bundle (module docstring); ``verify`` also hashes every file."""
    path = Path(path)
    manifest_file = path / MANIFEST
    if manifest_file.is_symlink() or not manifest_file.is_file():
        raise PocketdiffError(f"bundle {path} has no {MANIFEST}" if path.is_dir() else f"bundle {path} does not exist")
    raw = manifest_file.read_bytes()
    if trusted_key is not None:  # before the bytes are even parsed
        verify_signature(raw, path / SIGNATURE_FILE, trusted_key, path)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PocketdiffError(f"bundle manifest {manifest_file} is not valid JSON: {exc}") from None
    check_manifest(manifest, runtime_roles())
    named = [(f"manifest.files[{i}].path", e["path"]) for i, e in enumerate(manifest["files"])]
    named += [(f"manifest.components[{i}].path", c["path"]) for i, c in enumerate(manifest["components"])]
    named += [(f"manifest.tokenizer.{k}", manifest["tokenizer"][k]) for k in ("vocab", "merges")]
    if manifest.get("test_vectors"):
        named.append(("manifest.test_vectors", manifest["test_vectors"]))
    for where, rel in named:
        resolve_inside(path, rel, where)
    listed = {e["path"] for e in manifest["files"]}
    components = [BundleComponent(**c) for c in manifest["components"]]
    for c in components:
        if c.path not in listed and not any(p.startswith(c.path.rstrip("/") + "/") for p in listed):
            raise PocketdiffError(f"bundle component {c.name} ({c.path}) is not covered by the manifest's checksums")
    if verify:
        verify_files(path, manifest["files"])
    signer = trusted_key.public_bytes_raw().hex() if trusted_key is not None else None
    return Bundle(path, manifest, components, signer)
