"""``pocketdiff regress``: the quality-regression gate.

A baseline file (JSON, committed under ``benchmarks/baselines/``) fixes how a bundle is evaluated and
what it must reach::

    {"prompts": "toy-val", "n": 200, "seed": 0, "guidance": 2.0, "steps": null,
     "metrics": {"fid": {"max": 1.2}, "clip_score": {"min": 85.0}, "attribute_accuracy": {"min": 0.65}},
     "reference": {...the figures the bounds were set from, for the reader...}}

``steps: null`` means the bundle's own default steps. The bundle is evaluated through the torch-free
runtime on its ONNX models with the manifest's scheduler, as ``pocketdiff eval --bundle`` does; every metric outside its bound is a
regression, and the gate fails (exit 1) with a table of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pocketdiff.benchmarks.quality import evaluate_source
from pocketdiff.errors import PocketdiffError
from pocketdiff.generate import GenerateConfig
from pocketdiff.pinned import pinned_defaults
from pocketdiff.pipedir import atomic_output_file

METRICS = ("fid", "clip_score", "attribute_accuracy", "accuracy_heldout", "accuracy_rephrased")
BOUNDS = ("min", "max")


@dataclass(frozen=True)
class Check:
    metric: str
    value: float
    bound: str  # "min" or "max"
    limit: float

    @property
    def ok(self) -> bool:
        return self.value >= self.limit if self.bound == "min" else self.value <= self.limit


def load_baseline(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PocketdiffError(f"baseline {path} does not exist")
    try:
        b = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PocketdiffError(f"baseline {path} is not valid JSON: {exc}") from None
    for key in ("prompts", "n", "seed", "guidance", "metrics"):
        if key not in b:
            raise PocketdiffError(f"baseline {path} has no {key!r}")
    for metric, bound in b["metrics"].items():
        if metric not in METRICS:
            raise PocketdiffError(f"baseline {path}: unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
        if not bound or set(bound) - set(BOUNDS):
            raise PocketdiffError(f"baseline {path}: metric {metric} needs bounds from {', '.join(BOUNDS)}, got {bound}")
    return b


def metric_values(result: dict) -> dict[str, float]:
    """The gate's metrics from a ``pocketdiff eval`` result."""
    return {"fid": result["fid"], "clip_score": result["clip_score"], "attribute_accuracy": result["attribute_accuracy"],
            "accuracy_heldout": result["attributes"].get("split=heldout", {}).get("all", float("nan")),
            "accuracy_rephrased": result.get("rephrased", {}).get("attribute_accuracy", float("nan"))}


def check(values: dict[str, float], baseline: dict) -> list[Check]:
    return [Check(m, values[m], b, float(limit)) for m, bounds in baseline["metrics"].items()
            for b, limit in bounds.items()]


def table(checks: list[Check]) -> str:
    lines = [f"{'metric':<20}{'value':>10}  bound", "-" * 44]
    for c in checks:
        lines.append(f"{c.metric:<20}{c.value:>10.4f}  {'>=' if c.bound == 'min' else '<='} {c.limit:<10.4f}"
                     f"{'ok' if c.ok else 'REGRESSED'}")
    return "\n".join(lines)


def regress(bundle: str | Path, baseline_path: str | Path, eval_models: str | Path | None = None,
            out: str | Path | None = None, trusted_key=None) -> tuple[bool, list[Check], dict]:
    """Evaluate ``bundle`` as the baseline says (its signature checked with ``trusted_key`` when given);
    (passed, checks, eval result)."""
    b = load_baseline(baseline_path)
    steps = b.get("steps") or pinned_defaults(bundle=bundle).steps  # the sampler verifies the checksums once
    cfg = GenerateConfig(prompt="", steps=steps, guidance=b["guidance"], seed=b["seed"]).validate()
    result, _ = evaluate_source(cfg, b["prompts"], b["n"], eval_models, bundle_dir=bundle, trusted_key=trusted_key)
    checks = check(metric_values(result), b)
    if out is not None:
        with atomic_output_file(out) as tmp:
            tmp.write_text(json.dumps({"bundle": str(bundle), "baseline": str(baseline_path), "result": result,
                                       "checks": [{**c.__dict__, "ok": c.ok} for c in checks]}, indent=1) + "\n")
    return all(c.ok for c in checks), checks, result
