"""The shipped student's quality/speed trade-off: every trained variant as an app bundle, scored on the same
toy-val prompts and seeds, and timed side by side against the teacher's bundle in one `bench compare` run
(end to end composed from each side's call trace). Writes OUT.json, OUT.md and OUT.png (the Pareto front).

    python scripts/student_pareto.py --variants docs/student_pareto_variants.json --n 1000 --out docs/student_pareto

The variants file lists, per point, the pipeline it came from, the decoder it runs with ("own", or "teacher":
the teacher's AutoencoderKL decoder put in its place) and the command that made it. Bundles, evals and the
teacher's bundle are cached under build/pareto/ (delete a folder to redo it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from diffusers import StableDiffusionPipeline

from pocketdiff.benchmarks.compare import Side, compare
from pocketdiff.benchmarks.quality import evaluate_source
from pocketdiff.export.bundle import ExportConfig, write_bundle
from pocketdiff.generate import GenerateConfig
from pocketdiff.pinned import pinned_defaults, trained_steps
from pocketdiff.pipedir import StageRecord, load_pipeline, read_history, write_pipeline
from pocketdiff.toyworld import TEACHER_GUIDANCE, TOY_TEACHER_DIR

TEACHER = Path(TOY_TEACHER_DIR) / "pipeline"
CACHE = Path("build/pareto")
TARGET_SPEEDUP = 25.0


def variant_pipeline(v: dict) -> Path:
    if v["decoder"] == "own":
        return Path(v["pipeline"])
    out = CACHE / v["name"] / "pipeline"
    if not out.is_dir():  # the student's UNet with the teacher's decoder
        p, t = load_pipeline(v["pipeline"]), load_pipeline(TEACHER)
        pipe = StableDiffusionPipeline(**{**p.components, "vae": t.vae}, requires_safety_checker=False)
        write_pipeline(pipe, out, [*read_history(v["pipeline"]), StageRecord("swap-decoder", {"decoder": str(TEACHER)})])
    return out


def bundle_for(name: str, pipeline: Path, steps: int) -> Path:
    out = CACHE / name / "bundle"
    if not (out / "manifest.json").is_file():
        write_bundle(pipeline, out, ExportConfig(targets=("onnx",), steps=steps, guidance=TEACHER_GUIDANCE),
                     overwrite=True)
    return out


def scored(name: str, n: int, **source) -> dict:
    f = CACHE / name / f"eval_{n}.json"
    if not f.is_file():
        steps = source.pop("steps")
        gen = GenerateConfig("", steps=steps, guidance=TEACHER_GUIDANCE, seed=0, scheduler=source.pop("scheduler", None))
        result, _ = evaluate_source(gen, "toy-val", n, **source)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(result, indent=1))
    return json.loads(f.read_text())


def pareto(points: list[dict]) -> set[str]:
    """Names of the points no other point beats on both speed-up and FID."""
    return {p["name"] for p in points if not any(q["speedup"] >= p["speedup"] and q["fid"] <= p["fid"] and q is not p
                                                    and (q["speedup"] > p["speedup"] or q["fid"] < p["fid"])
                                                    for q in points)}


def plot(points: list[dict], teacher: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    front = pareto(points)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    order = sorted(points, key=lambda p: p["speedup"])
    for ax, key, label in ((axes[0], "fid", "FID (lower is better, log scale)"),
                           (axes[1], "accuracy", "attribute accuracy (higher is better)")):
        for i, p in enumerate(order):  # labels alternate above and below so neighbours do not overlap
            ax.scatter(p["speedup"], p[key], s=40, color="C3" if p["name"] in front else "C0", zorder=3)
            above = i % 2 == 0
            ax.annotate(p["name"], (p["speedup"], p[key]), fontsize=7, ha="left" if above else "right",
                        xytext=(5, 5) if above else (-5, -11), textcoords="offset points")
        ax.axvline(TARGET_SPEEDUP, color="grey", ls="--", lw=1, label=f"{TARGET_SPEEDUP:g}x target")
        ax.axhline(teacher[key], color="C2", ls=":", lw=1, label="teacher, 50 DDIM steps")
        if key == "fid":
            ax.axhline(1.1 * teacher[key], color="C2", ls="--", lw=1, label="1.1 x teacher (target)")
            ax.set_yscale("log")
        ax.set_xscale("log")
        for axis in (ax.xaxis, *([ax.yaxis] if key == "fid" else [])):
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlim(0.8 * order[0]["speedup"], 1.25 * order[-1]["speedup"])
        ax.set_xlabel("speed-up over the teacher bundle, 50 CFG steps (end to end, onnxruntime)", fontsize=8)
        ax.set_ylabel(label)
        ax.legend(fontsize=7, loc="center left")
    axes[0].set_title("red: the Pareto front of speed-up against FID", fontsize=9)
    axes[1].set_title("the same points against attribute accuracy", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="docs/student_pareto_variants.json")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--out", default="docs/student_pareto")
    args = ap.parse_args()
    variants = json.loads(Path(args.variants).read_text())
    teacher_bundle = bundle_for("teacher", TEACHER, 50)
    teacher = scored("teacher", args.n, pipeline_dir=TEACHER, steps=50, scheduler="ddim")
    rows, sides = [], [Side("bundle", teacher_bundle, "onnx", 50, TEACHER_GUIDANCE)]
    for v in variants:  # a variant gives its pipeline (exported here) or an existing bundle
        if v.get("bundle"):
            bundle = Path(v["bundle"])
        else:
            pipeline = variant_pipeline(v)
            bundle = bundle_for(v["name"], pipeline, trained_steps(pipeline))
        pinned = pinned_defaults(bundle=bundle)
        result = scored(v["name"], args.n, bundle_dir=bundle, steps=pinned.steps)
        rows.append({**v, "bundle": str(bundle), "steps": pinned.steps, "fid": result["fid"],
                     "accuracy": result["attribute_accuracy"], "clip_score": result["clip_score"],
                     "accuracy_heldout": result["attributes"]["split=heldout"]["all"],
                     "accuracy_rephrased": result["rephrased"]["attribute_accuracy"]})
        sides.append(Side("bundle", bundle, "onnx", pinned.steps, pinned.guidance))
    timing = compare(sides, args.threads, 3, args.repeat)
    for i, row in enumerate(rows):
        side = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i + 1]
        row["speedup"] = timing["end_to_end"]["speedup_vs_a"][side]
        row["e2e_ms"] = timing["end_to_end"][side]["e2e_ms"]
    out = Path(args.out)
    plot(rows, {"fid": teacher["fid"], "accuracy": teacher["attribute_accuracy"]}, out.with_suffix(".png"))
    record = {"command": " ".join(["python", *sys.argv]), "n": args.n, "guidance": TEACHER_GUIDANCE,
              "teacher": {k: teacher[k] for k in ("fid", "attribute_accuracy", "clip_score")} | {
                  "accuracy_rephrased": teacher["rephrased"]["attribute_accuracy"],
                  "e2e_ms": timing["end_to_end"]["A"]["e2e_ms"]},
              "variants": rows, "pareto_front": sorted(pareto(rows)), "bench": timing}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    t = record["teacher"]
    lines = ["# The student's quality/speed trade-off (toy teacher)\n",
             f"Generated by `{record['command']}` (`scripts/student_pareto.py`): {args.n} toy-val prompts, seed 0, "
             f"guidance {TEACHER_GUIDANCE}; speed-ups from one `bench compare` run (onnxruntime, {args.threads} threads), "
             f"each side's end to end composed from its call trace. Plot: [student_pareto.png](student_pareto.png).\n",
             f"Teacher (50 DDIM steps, CFG): FID {t['fid']:.3f}, attribute accuracy {t['attribute_accuracy']:.3f}, "
             f"rephrased prompts {t['accuracy_rephrased']:.3f}, {t['e2e_ms']:.1f} ms end to end.\n",
             "| variant | steps | decoder | speed-up | FID (× teacher) | accuracy (Δ points) | rephrased | Pareto | made by |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["speedup"]):
        lines.append(f"| {r['name']} | {r['steps']} | {r['decoder_label']} | {r['speedup']:.1f}× | {r['fid']:.3f} "
                     f"({r['fid'] / t['fid']:.2f}) | {r['accuracy']:.3f} ({100 * (r['accuracy'] - t['attribute_accuracy']):+.1f}) "
                     f"| {r['accuracy_rephrased']:.3f} | {'yes' if r['name'] in record['pareto_front'] else ''} | "
                     f"{r['made_by']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
