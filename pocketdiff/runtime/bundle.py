"""Read an app bundle: ``manifest.json`` (schema: ``export/manifest.schema.json``), checksums first.

A bundle lists *components* (name, role, target, file, precision, I/O specs), not three fixed slots,
so later methods can add theirs (a step-budget predictor, split UNets, exit heads, per-width UNets).
:func:`load_bundle` refuses an unknown format version and, before anything is loaded, checks every
file listed in ``files`` for presence, size and sha256: a tampered or truncated file is an error and
nothing runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pocketdiff.errors import PocketdiffError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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

    def component(self, role: str, target: str) -> BundleComponent:
        for c in self.components:
            if c.role == role and c.target == target:
                return c
        have = sorted({f"{c.role}/{c.target}" for c in self.components})
        raise PocketdiffError(f"bundle {self.path} has no {role} for target {target!r}; it has: {', '.join(have)}")

    @property
    def targets(self) -> list[str]:
        return sorted({c.target for c in self.components})


def verify_files(root: Path, files: list[dict]) -> None:
    for entry in files:
        f = root / entry["path"]
        if not f.is_file():
            raise PocketdiffError(f"bundle file {entry['path']} is missing from {root}")
        if f.stat().st_size != entry["bytes"]:
            raise PocketdiffError(f"bundle file {entry['path']} is truncated or altered: {f.stat().st_size} bytes, "
                                  f"manifest says {entry['bytes']}")
        if sha256_file(f) != entry["sha256"]:
            raise PocketdiffError(f"bundle file {entry['path']} fails its sha256 check (tampered or corrupt)")


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise PocketdiffError(f"bundle {path} has no {MANIFEST}" if path.is_dir() else f"bundle {path} does not exist")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PocketdiffError(f"bundle manifest {path / MANIFEST} is not valid JSON: {exc}") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise PocketdiffError(f"bundle {path} has manifest format_version {version!r}; this pocketdiff reads "
                              f"{FORMAT_VERSION}")
    listed = {e["path"] for e in manifest.get("files", [])}
    components = [BundleComponent(**c) for c in manifest.get("components", [])]
    for c in components:
        if c.path not in listed and not any(p.startswith(c.path.rstrip("/") + "/") for p in listed):
            raise PocketdiffError(f"bundle component {c.name} ({c.path}) is not covered by the manifest's checksums")
    if verify:
        verify_files(path, manifest.get("files", []))
    return Bundle(path, manifest, components)
