"""The committed record of a build (docs/build_toy_full.{json,md,html}), with the check that its report's
numbers match `pocketdiff eval` and `pocketdiff bench compare` run on their own.

    pocketdiff eval --bundle build/toy-full/export/student --n 1000 --out build/sep_eval.json
    pocketdiff bench compare bundle=build/toy-full/bench/teacher,steps=50 bundle=build/toy-full/export/student \
        --json build/sep_bench.json
    python scripts/build_record.py --work build/toy-full --recipe recipes/toy-full.toml \
        --separate-eval build/sep_eval.json --separate-bench build/sep_bench.json --out docs/build_toy_full \
        --history docs/build_toy_full_history.md

The history file (hand-kept prose of the earlier shipped students, with their commands) is appended as is.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

KEYS = ("fid", "clip_score", "attribute_accuracy")
SPEEDUP_TARGET = 25.0


def _eval_summary(e: dict) -> dict:
    return {"prompts": e["prompts"], "n": e["n"], "seed": e["seed"], "steps": e["steps"], "guidance": e["guidance"],
            **{k: e[k] for k in KEYS}, "accuracy_heldout": e["attributes"].get("split=heldout", {}).get("all"),
            "accuracy_rephrased": e.get("rephrased", {}).get("attribute_accuracy"),
            "attributes": e["attributes"].get("overall")}


def _bench_summary(b: dict) -> dict:
    rows = [{"component": c["component"], "batch": c["batch"], "teacher_ms": c.get("A", {}).get("median_ms"),
             "student_ms": c.get("B", {}).get("median_ms"), "ratio": c.get("ratio_vs_a", {}).get("B")}
            for c in b["components"]]  # a (role, batch) one side never calls has one time and no ratio
    e = b["end_to_end"]
    return {"components": rows, "teacher_e2e_ms": e["A"].get("e2e_ms"), "student_e2e_ms": e["B"].get("e2e_ms"),
            "teacher_calls": e["A"]["calls"], "student_calls": e["B"]["calls"],
            "speedup": e.get("speedup_vs_a", {}).get("B")}


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _bench_lines(title: str, bench: dict) -> list[str]:
    calls = lambda c: ", ".join(f"{k} × {v:g}" for k, v in c.items())  # noqa: E731
    return [title, "", "| component | batch | teacher ms | student ms | ratio |", "|---|---|---|---|---|",
            *[f"| {r['component']} | {r['batch']} | {_num(r['teacher_ms'], '.2f')} | {_num(r['student_ms'], '.2f')} | "
              f"{_num(r['ratio'], '.3f')} |" for r in bench["components"]],
            f"| **end to end** | | {bench['teacher_e2e_ms']:.1f} | {bench['student_e2e_ms']:.1f} | "
            f"**{1 / bench['speedup']:.4f}** ({bench['speedup']:.1f}× faster) |", "",
            f"End to end is each side's call trace times its own medians: the teacher {calls(bench['teacher_calls'])}; "
            f"the student {calls(bench['student_calls'])}.", ""]


def _target_lines(t: dict, s: dict, benches: dict) -> list[str]:
    """The shipped student's targets (issue 21), each met or missed by the numbers above."""
    rows = [("attribute accuracy ≥ the teacher's", s["attribute_accuracy"], t["attribute_accuracy"],
             s["attribute_accuracy"] >= t["attribute_accuracy"]),
            ("FID ≤ 1.1 × the teacher's", s["fid"], 1.1 * t["fid"], s["fid"] <= 1.1 * t["fid"]),
            ("rephrased-prompt accuracy ≥ the teacher's − 2 points", s["accuracy_rephrased"],
             t["accuracy_rephrased"] - 0.02, s["accuracy_rephrased"] >= t["accuracy_rephrased"] - 0.02 - 1e-9)]
    rows += [(f"end to end ≥ {SPEEDUP_TARGET:g}× faster ({backend})", b["speedup"], SPEEDUP_TARGET,
              b["speedup"] >= SPEEDUP_TARGET) for backend, b in benches.items()]
    return ["## Targets", "", "| target | student | bound | |", "|---|---|---|---|",
            *[f"| {name} | {value:.3f} | {bound:.3f} | {'met' if ok else '**missed**'} |"
              for name, value, bound, ok in rows], ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--separate-eval", required=True)
    ap.add_argument("--separate-bench", required=True)
    ap.add_argument("--history", default=None, help="markdown appended as the record's history section")
    ap.add_argument("--out", required=True, help="path stem: writes .json, .md and .html")
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    record = json.loads((work / "build.json").read_text())
    walls = {k: v.get("wall_time_s") for k, v in record["stages"].items()}
    evals = {n: _eval_summary(json.loads((work / "eval" / f"{n}.json").read_text())) for n in ("teacher", "student")}
    benches = {f.stem.removeprefix("compare").strip("_") or "onnx": _bench_summary(json.loads(f.read_text()))
               for f in sorted((work / "bench").glob("compare*.json"))}
    handoff = json.loads((work / "eval" / "handoff.json").read_text()) if (work / "eval" / "handoff.json").is_file() \
        else None
    sep_eval = _eval_summary(json.loads(Path(args.separate_eval).read_text()))
    sep_bench = _bench_summary(json.loads(Path(args.separate_bench).read_text()))
    eval_match = {k: {"report": evals["student"][k], "separate": sep_eval[k]} for k in KEYS}
    bench = benches["onnx"]
    bench_match = [{"component": a["component"], "batch": a["batch"], "report_ratio": a["ratio"],
                    "separate_ratio": b["ratio"]} for a, b in zip(bench["components"], sep_bench["components"])]
    manifest = json.loads((work / "export" / "student" / "manifest.json").read_text())
    size = sum(f["bytes"] for f in manifest["files"])
    doc = {"recipe": args.recipe, "wall_time_s": walls, "total_wall_time_s": round(sum(v or 0 for v in walls.values()), 1),
           "eval": evals, "bench": benches, "handoff": handoff, "bundle_bytes": size,
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
        f"Quality ({t['prompts']}, n = {t['n']}, seed {t['seed']}, guidance {t['guidance']}; the rephrased prompts are "
        "the same scenes in phrasings no training template makes):",
        "",
        "| model | steps | FID | CLIP score | attribute accuracy | held-out accuracy | rephrased prompts |",
        "|---|---|---|---|---|---|---|",
        *[f"| {n} | {e['steps']} | {e['fid']:.3f} | {e['clip_score']:.2f} | {e['attribute_accuracy']:.3f} | "
          f"{e['accuracy_heldout'] if e['accuracy_heldout'] is None else round(e['accuracy_heldout'], 3)} | "
          f"{e['accuracy_rephrased'] if e['accuracy_rephrased'] is None else round(e['accuracy_rephrased'], 3)} |"
          for n, e in (("teacher (DDIM)", t), ("student (bundle, runtime)", s))],
        "",
    ]
    lines += _target_lines(t, s, benches)
    if handoff:
        worst = handoff["largest_accuracy_loss"]
        lines += ["## Handoff: quality after each stage (same prompts and seeds)", "",
                  "| stage | what | steps | FID | accuracy | Δ accuracy (points) | held-out | rephrased |",
                  "|---|---|---|---|---|---|---|---|",
                  *[f"| {r['stage']} | {r['what']} | {r['steps']} | {r['fid']:.3f} | {r['attribute_accuracy']:.3f} | "
                    f"{100 * r['delta']['attribute_accuracy']:+.1f} | {r['accuracy_heldout']:.3f} | "
                    f"{r['accuracy_rephrased']:.3f} |" if "delta" in r else
                    f"| {r['stage']} | {r['what']} | {r['steps']} | {r['fid']:.3f} | {r['attribute_accuracy']:.3f} | - | "
                    f"{r['accuracy_heldout']:.3f} | {r['accuracy_rephrased']:.3f} |" for r in handoff["rows"]],
                  "", f"The stage that loses the most attribute accuracy: **{worst['stage']}** "
                      f"({worst['points']:+.1f} points; {worst['what']}).", ""]
    for backend, b in benches.items():
        lines += _bench_lines(f"Latency ({backend}, 2 threads, alternating calls; the teacher bundle at 50 CFG steps):",
                              b)
    lines += [
        "## The report's numbers against `pocketdiff eval` and `pocketdiff bench compare` run on their own",
        "",
        "| metric | report (eval stage) | `pocketdiff eval --bundle` |", "|---|---|---|",
        *[f"| {k} | {v['report']:.4f} | {v['separate']:.4f} |" for k, v in eval_match.items()],
        "",
        "| component | batch | report ratio | separate `bench compare` ratio |", "|---|---|---|---|",
        *[f"| {r['component']} | {r['batch']} | {_num(r['report_ratio'], '.3f')} | "
          f"{_num(r['separate_ratio'], '.3f')} |" for r in bench_match],
        f"| end-to-end speed-up | | {bench['speedup']:.2f}× | {sep_bench['speedup']:.2f}× |",
        "",
        "The eval numbers are the same run twice (same bundle, prompts and seeds). Latencies are timings, so they "
        "agree within run-to-run noise, not exactly. `make test` repeats the eval check on every run "
        "(`tests/test_shipped_student.py`).",
        "",
    ]
    if args.history:
        lines += [Path(args.history).read_text().rstrip(), ""]
    Path(f"{out}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
