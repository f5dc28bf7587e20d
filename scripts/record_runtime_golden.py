"""Record the runtime's images for fixed prompts and seeds, so a refactor of the sampler can be checked
pixel for pixel against what the code did before it (``tests/test_runtime_golden.py``).

    python scripts/record_runtime_golden.py --out tests/data/runtime_golden.npz

Cases (all through ``RuntimePipeline.from_bundle``; the bundles are exported here the way the test's
fixtures export them):
- the shipped student bundle at its pinned steps and guidance, onnxruntime and ExecuTorch;
- the shipped toy teacher exported to an ONNX bundle (``GOLDEN_TEACHER_EXPORT``): 20 steps with its own
  PNDM and with DDIM, at guidance 2 (CFG) and guidance 1 (one pass, no CFG);
- a tiny guidance-embedded pipeline built from config (``golden_embedded_pipeline``), 6 steps, guidance 3
  (the single-pass ``timestep_cond`` path).

The file stores every image (uint8) and, per case, the commit it was recorded at; recording cases again
after a change that is meant to alter their images (``--bundle student`` after shipping a new student) is a
deliberate act, named in that commit, and leaves the other cases as they were recorded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from golden import CASES, export_golden_bundles, run_case  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/data/runtime_golden.npz")
    ap.add_argument("--bundle", action="append", default=None, choices=sorted({c.bundle for c in CASES}),
                    help="record only this bundle's cases, keeping the others as recorded (repeatable)")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "pocketdiff"], capture_output=True,
                                text=True).stdout.strip())
    out = Path(args.out)
    cases = [c for c in CASES if args.bundle is None or c.bundle in args.bundle]
    images, recorded = {}, {}
    if args.bundle is not None:  # the other cases stay as they were, with the commit each was recorded at
        old = np.load(out)
        meta = json.loads(str(old["meta"]))
        for key in meta["cases"]:
            images[key] = old[key]
            recorded[key] = meta.get("recorded", {}).get(key, {"commit": meta["commit"],
                                                               "pocketdiff_tree_dirty": meta["pocketdiff_tree_dirty"]})
    with tempfile.TemporaryDirectory() as tmp:
        bundles = export_golden_bundles(Path(tmp))
        for case in cases:
            images[case.key] = run_case(case, bundles)
            recorded[case.key] = {"commit": commit, "pocketdiff_tree_dirty": dirty}
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"cases": [c.key for c in CASES], "recorded": recorded}
    np.savez_compressed(out, meta=np.array(json.dumps(meta)), **{c.key: images[c.key] for c in CASES})
    sys.stdout.write(f"wrote {len(cases)} cases ({sum(len(images[c.key]) for c in cases)} images) to {out} "
                     f"at {commit[:10]}{' (dirty)' if dirty else ''}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
