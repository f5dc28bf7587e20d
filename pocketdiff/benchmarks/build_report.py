"""Build stage ``report``: one HTML page for a ``pocketdiff build`` (``WORKDIR/report/index.html``) from the
other stages' outputs: teacher and student grids on the same prompts and seeds, the eval stage's quality
table, the bench stage's latency table and trace-composed end to end, the committed SD1.5 comparisons, and
every training job's loss curves. The numbers are read from the stages' JSON, not recomputed.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocketdiff.benchmarks.compare import BACKEND_LABELS, compare_file
from pocketdiff.benchmarks.quality import image_grid
from pocketdiff.benchmarks.report import figure_data_uri, png_data_uri, table_html, write_page
from pocketdiff.build import Context, Stage
from pocketdiff.export.bundle import student_bundle
from pocketdiff.generate import GenerateConfig, generate_many
from pocketdiff.pinned import pinned_defaults
from pocketdiff.pipedir import read_json, read_train_log
from pocketdiff.toyworld.world import DEMO_PROMPTS


@dataclass
class ReportStage:
    title: str = "pocketdiff build"
    # committed `bench compare` results of the SD1.5 architecture (random weights): the shipped slim spec
    # and the 0.5-width decoder against SD1.5's (make bench-slim-sd15, make bench-decoder-sd15)
    sd15_results: tuple[str, ...] = ("docs/sd15_slim_benchmark.json", "docs/sd15_decoder_benchmark.json")


NOT_LOSSES = ("step", "blocks_skipped")  # logged beside the losses, not plotted with them


def build_logs(workdir: Path) -> dict[str, list[dict]]:
    """Every training log under ``workdir/*.work``, by job. The evolution's short fine-tunes (one job per
    iteration, ``.../iter_NNN``) are joined into one curve, steps counted on from one to the next."""
    logs: dict[str, list[dict]] = {}
    for f in sorted(workdir.glob("*.work/**/log.jsonl")):
        rows, job = read_train_log(f.parent), f.parent.relative_to(workdir)
        if job.name.startswith("iter_"):
            name, done = f"{job.parent.as_posix()} (iterations joined)", logs.get(f"{job.parent.as_posix()} (iterations joined)", [])
            offset = done[-1]["step"] if done else 0
            logs[name] = done + [{**r, "step": r["step"] + offset} for r in rows]
        else:
            logs[job.as_posix()] = rows
    return {k: v for k, v in logs.items() if v}


def _loss_figure(logs: dict[str, list[dict]]) -> str:
    """One panel per training log (every logged term against the step), as a data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots((len(logs) + 3) // 4, min(4, len(logs)), figsize=(3.4 * min(4, len(logs)),
                             2.6 * ((len(logs) + 3) // 4)), squeeze=False)
    for ax in axes.flat[len(logs):]:
        ax.axis("off")
    for ax, (name, rows) in zip(axes.flat, logs.items()):
        terms = [k for k in rows[0] if k not in NOT_LOSSES and isinstance(rows[0][k], (int, float))]
        for term in terms:  # a term that is 0 at a step (e.g. no CFG rows in that batch) leaves a gap on the log axis
            ax.plot([r["step"] for r in rows], [r[term] if r[term] > 0 else float("nan") for r in rows],
                    label=term, lw=1, marker="o" if len(rows) < 5 else None, ms=3)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5)
    fig.tight_layout()
    return figure_data_uri(fig)


def handoff_html(handoff: dict) -> str:
    """The handoff table: every stage's quality, its change from the stage before, the largest loss named."""
    rows = [{"stage": r["stage"], "what": r["what"], "FID": r["fid"], "CLIP score": r["clip_score"],
             "attribute accuracy": r["attribute_accuracy"], "held-out": r["accuracy_heldout"],
             "rephrased prompts": r["accuracy_rephrased"],
             "Δ accuracy (points)": f"{100 * r['delta']['attribute_accuracy']:+.1f}" if "delta" in r else "-",
             "Δ FID": f"{r['delta']['fid']:+.3f}" if "delta" in r else "-"} for r in handoff["rows"]]
    worst = handoff.get("largest_accuracy_loss")
    note = (f"<p>The stage that loses the most attribute accuracy: <b>{html.escape(worst['stage'])}</b> "
            f"({worst['points']:+.1f} points; {html.escape(worst['what'])}).</p>" if worst else "")
    return table_html(rows, list(rows[0])) + note


def write_build_report(ctx: Context, cfg: ReportStage) -> Path:
    """``WORKDIR/report/index.html`` from the other stages' outputs (module docstring)."""
    r, w = ctx.recipe, ctx.workdir
    sections: list[tuple[str, str]] = []
    names = ("teacher", "student") + ((r.eval.reference_name,) if r.eval.reference_bundle else ())
    evals = {n: read_json(w / "eval" / f"{n}.json") for n in names if (w / "eval" / f"{n}.json").is_file()}
    if "export" in r.stages:
        student_steps = read_json(student_bundle(ctx) / "manifest.json")["defaults"]["steps"]
        g = r.export.guidance
        teacher = generate_many(list(DEMO_PROMPTS), GenerateConfig("", steps=r.eval.teacher_steps, guidance=g, seed=0,
                                                                   scheduler=r.eval.teacher_scheduler),
                                pipeline_dir=ctx.teacher)
        student = generate_many(list(DEMO_PROMPTS), GenerateConfig("", steps=student_steps, guidance=g, seed=0),
                                bundle_dir=student_bundle(ctx))
        lines, text = [teacher, student], ""
        if r.eval.reference_bundle:  # a third row: the reference bundle at its own pinned steps and guidance
            ref = pinned_defaults(bundle=r.eval.reference_bundle)
            lines.append(generate_many(list(DEMO_PROMPTS), GenerateConfig("", steps=ref.steps, guidance=ref.guidance,
                                                                         seed=0), bundle_dir=r.eval.reference_bundle))
            text = (f" Third row: {html.escape(r.eval.reference_name)} ({html.escape(r.eval.reference_bundle)}), "
                    f"{ref.steps} steps, guidance {ref.guidance}, on the same runtime.")
        grid = image_grid(np.concatenate(lines), cols=len(DEMO_PROMPTS), scale=4)
        prompts = "".join(f"<li>{html.escape(p)}</li>" for p in DEMO_PROMPTS)
        sections.append(("Teacher vs student (same prompts, same seeds)",
                         f"<p>Top row: the teacher, {r.eval.teacher_scheduler} {r.eval.teacher_steps} steps (its "
                         f"pipeline). Second row: the student bundle, {student_steps} steps, on the torch-free "
                         f"runtime (onnxruntime).{text} Guidance {g}; image i has seed i.</p><ol>{prompts}</ol>"
                         f"<img src='{png_data_uri(grid)}'>"))
    if evals:
        if r.eval.real:  # the real-checkpoint protocol: Inception FID and CLIP score
            rows = [{"model": n, "steps": e["steps"], "FID (Inception)": e["fid_inception"],
                     "CLIP score": e["clip_score"], "source": e["source"]} for n, e in evals.items()]
        else:
            rows = [{"model": n, "steps": e["steps"], "FID": e["fid"], "CLIP score": e["clip_score"],
                     "attribute accuracy": e["attribute_accuracy"],
                     "accuracy (held-out)": e["attributes"].get("split=heldout", {}).get("all", "-"),
                     "accuracy (rephrased prompts)": e.get("rephrased", {}).get("attribute_accuracy", "-"),
                     "source": e["source"]} for n, e in evals.items()]
        prompts = r.eval.captions if r.eval.real else r.eval.prompts
        note = ""
        if r.eval.reference_bundle and {"student", r.eval.reference_name} <= set(evals) and not r.eval.real:
            s, ref = evals["student"], evals[r.eval.reference_name]
            note = (f"<p>This build's student and {html.escape(r.eval.reference_name)} on the same prompts and seeds: "
                    f"attribute accuracy {s['attribute_accuracy']:.3f} against {ref['attribute_accuracy']:.3f}, FID "
                    f"{s['fid']:.3f} against {ref['fid']:.3f}"
                    f"{' (this recipe trades quality for a short build)' if s['fid'] > ref['fid'] else ''}.</p>")
        sections.append((f"Quality ({prompts}, n={r.eval.n}, seed {r.eval.seed}; eval/*.json)",
                         table_html(rows, list(rows[0])) + note))
    if (w / "eval" / "handoff.json").is_file():
        sections.append(("Handoff: quality after each stage (same prompts and seeds; eval/handoff.json)",
                         handoff_html(read_json(w / "eval" / "handoff.json"))))
    for backend in r.bench.backends:
        f = w / "bench" / compare_file(backend)
        if not f.is_file():
            continue
        res = read_json(f)
        rows = [{"component": c["component"], "batch": c["batch"], "teacher ms": c["A"]["median_ms"],
                 "student ms": c["B"]["median_ms"], "student / teacher": c["ratio_vs_a"]["B"]}
                for c in res["components"] if "A" in c and "B" in c]
        e = res["end_to_end"]
        e2e = [{"side": n, "policy": e[n]["policy"], "steps": e[n]["steps"], "guidance": e[n]["guidance"],
                "calls": ", ".join(f"{k} x{v:g}" for k, v in e[n]["calls"].items()),
                "end to end ms": e[n].get("e2e_ms", "-"),
                "speedup": e.get("speedup_vs_a", {}).get(n, 1.0 if n == "A" else "-")} for n in ("A", "B")]
        sections.append((f"Latency ({BACKEND_LABELS[backend]}, one process, alternating; bench/{f.name})",
                         "<p>A = the teacher bundle, B = the student bundle.</p>" + table_html(rows, list(rows[0]))
                         + "<p>End to end, composed from each side's call trace (one generation: every call's "
                           "role and batch) times that side's measured median per (role, batch).</p>"
                         + table_html(e2e, list(e2e[0]))))
    sd15 = []
    for f in cfg.sd15_results:
        if not Path(f).is_file():
            sd15.append({"result": f, "component": "(file not found)"})
            continue
        res = read_json(f)
        for c in res["components"]:
            if "A" in c and "B" in c:
                sd15.append({"result": Path(f).name, "component": c["component"], "batch": c["batch"],
                             "SD1.5 ms": c["A"]["median_ms"], "ours ms": c["B"]["median_ms"],
                             "ratio": c["ratio_vs_a"]["B"]})
    if sd15:
        sections.append(("SD1.5 architecture (random weights, 512²; committed bench compare results)",
                         table_html(sd15, ["result", "component", "batch", "SD1.5 ms", "ours ms", "ratio"])))
    logs = build_logs(w)
    if logs:
        sections.append(("Loss curves (every training job of the build)", f"<img src='{_loss_figure(logs)}'>"))
    return write_page(w / "report" / "index.html", cfg.title, sections)


def run_report(ctx: Context, cfg: ReportStage) -> None:
    write_build_report(ctx, cfg)


STAGE = Stage("report", ReportStage, run_report)
