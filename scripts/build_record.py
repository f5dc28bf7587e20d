"""The committed record of a build (docs/build_toy_full.{json,md,html}), with the check that its report's
numbers match `pocketdiff eval` and `pocketdiff bench compare` run on their own.

    pocketdiff eval --bundle build/toy-full/export/student --guidance 2 --n 1000 --out build/sep_eval.json
    pocketdiff bench compare bundle=build/toy-full/export/teacher,steps=50,guidance=2 \
        bundle=build/toy-full/export/student,steps=8,guidance=2 --json build/sep_bench.json
    python scripts/build_record.py --work build/toy-full --recipe recipes/toy-full.toml \
        --separate-eval build/sep_eval.json --separate-bench build/sep_bench.json --out docs/build_toy_full
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

KEYS = ("fid", "clip_score", "attribute_accuracy")


def _eval_summary(e: dict) -> dict:
    return {"prompts": e["prompts"], "n": e["n"], "seed": e["seed"], "steps": e["steps"], "guidance": e["guidance"],
            **{k: e[k] for k in KEYS}, "accuracy_heldout": e["attributes"].get("split=heldout", {}).get("all"),
            "attributes": e["attributes"].get("overall")}


def _bench_summary(b: dict) -> dict:
    rows = [{"component": c["component"], "batch": c["batch"], "teacher_ms": c["A"]["median_ms"],
             "student_ms": c["B"]["median_ms"], "ratio": c["ratio_vs_a"]["B"]}
            for c in b["components"] if "A" in c and "B" in c]
    e = b["end_to_end"]
    return {"components": rows, "teacher_e2e_ms": e["A"].get("e2e_ms"), "student_e2e_ms": e["B"].get("e2e_ms"),
            "speedup": e.get("speedup_vs_a", {}).get("B")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--separate-eval", required=True)
    ap.add_argument("--separate-bench", required=True)
    ap.add_argument("--out", required=True, help="path stem: writes .json, .md and .html")
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    record = json.loads((work / "build.json").read_text())
    walls = {k: v.get("wall_time_s") for k, v in record["stages"].items()}
    evals = {n: _eval_summary(json.loads((work / "eval" / f"{n}.json").read_text())) for n in ("teacher", "student")}
    bench = _bench_summary(json.loads((work / "bench" / "compare.json").read_text()))
    sep_eval = _eval_summary(json.loads(Path(args.separate_eval).read_text()))
    sep_bench = _bench_summary(json.loads(Path(args.separate_bench).read_text()))
    eval_match = {k: {"report": evals["student"][k], "separate": sep_eval[k]} for k in KEYS}
    bench_match = [{"component": a["component"], "batch": a["batch"], "report_ratio": a["ratio"],
                    "separate_ratio": b["ratio"]} for a, b in zip(bench["components"], sep_bench["components"])]
    manifest = json.loads((work / "export" / "student" / "manifest.json").read_text())
    size = sum(f["bytes"] for f in manifest["files"])
    doc = {"recipe": args.recipe, "wall_time_s": walls, "total_wall_time_s": round(sum(v or 0 for v in walls.values()), 1),
           "eval": evals, "bench": bench, "bundle_bytes": size,
           "separate": {"eval": eval_match, "bench": {"components": bench_match, "report_speedup": bench["speedup"],
                                                      "separate_speedup": sep_bench["speedup"]}}}
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(doc, indent=1) + "\n")
    shutil.copyfile(work / "report" / "index.html", f"{out}.html")
    t, s = evals["teacher"], evals["student"]
    lines = [
        f"# The shipped student: `{args.recipe}`",
        "",
        f"Made by `pocketdiff build --teacher pocketdiff/toyworld/assets/pipeline --recipe {args.recipe} --out "
        f"{work}` (`make toy-full`); the report page is [{out.name}.html]({out.name}.html), the numbers "
        f"[{out.name}.json]({out.name}.json). Bundle: {size / 1e6:.1f} MB (ONNX, Core ML, ExecuTorch).",
        "",
        "| stage | wall time (s) |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in walls.items()],
        f"| **total** | **{doc['total_wall_time_s']}** ({doc['total_wall_time_s'] / 60:.0f} min) |",
        "",
        f"Quality ({t['prompts']}, n = {t['n']}, seed {t['seed']}, guidance {t['guidance']}):",
        "",
        "| model | steps | FID | CLIP score | attribute accuracy | held-out accuracy |", "|---|---|---|---|---|---|",
        *[f"| {n} | {e['steps']} | {e['fid']:.3f} | {e['clip_score']:.2f} | {e['attribute_accuracy']:.3f} | "
          f"{e['accuracy_heldout'] if e['accuracy_heldout'] is None else round(e['accuracy_heldout'], 3)} |"
          for n, e in (("teacher (DDIM)", t), ("student (bundle, runtime)", s))],
        "",
        "Latency (onnxruntime, 2 threads, alternating calls; the teacher bundle at 50 CFG steps):",
        "",
        "| component | batch | teacher ms | student ms | ratio |", "|---|---|---|---|---|",
        *[f"| {r['component']} | {r['batch']} | {r['teacher_ms']:.2f} | {r['student_ms']:.2f} | {r['ratio']:.3f} |"
          for r in bench["components"]],
        f"| **end to end** | | {bench['teacher_e2e_ms']:.1f} | {bench['student_e2e_ms']:.1f} | "
        f"**{1 / bench['speedup']:.4f}** ({bench['speedup']:.1f}× faster) |",
        "",
        "## The report's numbers against `pocketdiff eval` and `pocketdiff bench compare` run on their own",
        "",
        "| metric | report (eval stage) | `pocketdiff eval --bundle` |", "|---|---|---|",
        *[f"| {k} | {v['report']:.4f} | {v['separate']:.4f} |" for k, v in eval_match.items()],
        "",
        "| component | batch | report ratio | separate `bench compare` ratio |", "|---|---|---|---|",
        *[f"| {r['component']} | {r['batch']} | {r['report_ratio']:.3f} | {r['separate_ratio']:.3f} |"
          for r in bench_match],
        f"| end-to-end speed-up | | {bench['speedup']:.2f}× | {sep_bench['speedup']:.2f}× |",
        "",
        "The eval numbers are the same run twice (same bundle, prompts and seeds). Latencies are timings, so they "
        "agree within run-to-run noise, not exactly. `make test` repeats the eval check on every run "
        "(`tests/test_shipped_student.py`).",
        "",
    ]
    Path(f"{out}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
