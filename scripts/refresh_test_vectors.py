"""Rewrite a bundle's ``test_vectors.json`` in the current format (``pocketdiff/export/vectors.py``) from the bundle's
own ONNX components, and its ``manifest.json`` entry for the file (sha256, bytes); nothing else changes.

For a bundle written before the format grew (the shipped student's): ``pocketdiff export`` writes the current
format itself. A signed bundle is refused (its signature covers the manifest). Both files are replaced atomically.

    python scripts/refresh_test_vectors.py pocketdiff/toyworld/assets/student
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pocketdiff.errors import PocketdiffError
from pocketdiff.export.vectors import bundle_vectors
from pocketdiff.runtime.bundle import MANIFEST, SIGNATURE_FILE, sha256_file
from pocketdiff.runtime.sampler import RuntimePipeline


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def refresh(bundle: Path) -> None:
    if (bundle / SIGNATURE_FILE).exists():
        raise PocketdiffError(f"bundle {bundle} is signed; re-export it instead (its signature covers the manifest)")
    runtime = RuntimePipeline.from_bundle(bundle, backend="onnx")  # verifies every file first
    manifest = json.loads((bundle / MANIFEST).read_text())
    rel = manifest.get("test_vectors") or "test_vectors.json"
    vectors = bundle_vectors(runtime, bundle / manifest["tokenizer"]["vocab"].rsplit("/", 1)[0],
                             manifest["defaults"]["steps"], manifest["defaults"]["guidance"])
    _replace(bundle / rel, json.dumps(vectors, indent=1) + "\n")
    entry = next(f for f in manifest["files"] if f["path"] == rel)
    entry.update(sha256=sha256_file(bundle / rel), bytes=(bundle / rel).stat().st_size)
    manifest["test_vectors"] = rel
    _replace(bundle / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    try:
        refresh(ap.parse_args().bundle)
    except PocketdiffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
