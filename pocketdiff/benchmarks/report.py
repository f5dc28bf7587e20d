"""HTML pages: one self-contained file, images embedded as PNG data URIs."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from pocketdiff.errors import PocketdiffError


def png_data_uri(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def table_html(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def write_page(path: str | Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """``sections``: (heading, inner HTML). Written atomically."""
    from pocketdiff.pipedir import atomic_output_file

    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{image-rendering:pixelated}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<h2>{html.escape(h)}</h2>{inner}" for h, inner in sections]
    parts.append("</body></html>")
    path = Path(path)
    with atomic_output_file(path) as tmp:
        tmp.write_text("".join(parts), encoding="utf-8")
    return path


def figure_data_uri(fig) -> str:
    """A matplotlib figure as a PNG data URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bars(groups: list[str], series: dict[str, list[float | None]], ylabel: str, title: str) -> str:
    """Grouped bar chart (log scale), one group per component, one bar per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) * max(1, len(series)) / 2), 3.6))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g, v in enumerate(values) if v is not None]
        ys = [v for v in values if v is not None]
        bars = ax.bar(xs, ys, width, label=name)
        ax.bar_label(bars, labels=[f"{y:.0f}" if y >= 10 else f"{y:.3g}" for y in ys], fontsize=7, rotation=90,
                     padding=2)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.25)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    return f"<img src='{figure_data_uri(fig)}' style='image-rendering:auto;max-width:100%'>"


def _machine_html(machine: dict) -> str:
    rows = [{"field": k, "value": v} for k, v in machine.items() if k != "versions"]
    rows += [{"field": f"version: {k}", "value": v} for k, v in machine.get("versions", {}).items()]
    return table_html(rows, ["field", "value"])


def _case(row: dict) -> str:
    return f"{row['component']} b{row['batch']}"


def write_bench_report(path: str | Path, bench_results: list[dict] = (), compare_result: dict | None = None,
                       title: str = "pocketdiff benchmark") -> Path:
    """One self-contained HTML page from ``pocketdiff bench`` JSON results (one per backend) and/or a
    ``bench compare`` result: latency bars, a ratio table, FLOPs/params, machine info."""
    if not bench_results and not compare_result:
        raise PocketdiffError("a benchmark report needs at least one bench or compare result")
    sections: list[tuple[str, str]] = []
    machine = None
    if bench_results:
        cases = list(dict.fromkeys(_case(r) for res in bench_results for r in res["components"]))
        series = {}
        rows = []
        for res in bench_results:
            name = f"{res['backend']} ({Path(res['source']).name})"
            by_case = {_case(r): r for r in res["components"]}
            series[name] = [by_case[c]["median_ms"] if c in by_case else None for c in cases]
            for r in res["components"]:
                f = r.get("flops") or {}
                rows.append({"source": name, "case": _case(r), "median ms": r["median_ms"], "min ms": r["min_ms"],
                             "max ms": r["max_ms"], "cold start s": r["cold_start_s"], "peak RSS MB": r["peak_rss_mb"],
                             "params M": f["params"] / 1e6 if f else "-", "GMACs": f["macs"] / 1e9 if f else "-",
                             "GFLOP/s": r.get("gflops_per_s", "-"),
                             "of peak": f"{r['fraction_of_peak']:.1%}" if "fraction_of_peak" in r else "-"})
            machine = machine or res["machine"]
        peak = bench_results[0]["peak"]
        sections.append(("Per-component latency (each case in its own process)",
                         _bars(cases, series, "median ms (log)", "median latency after warm-up")))
        sections.append(("Latency, cold start, memory, FLOPs", table_html(rows, list(rows[0]))
                         + f"<p>fp32 peak: {peak['peak_gflops']} GFLOP/s ({html.escape(str(peak['how']))})</p>"))
    if compare_result:
        names = list(compare_result["sides"])
        cases = [_case(r) for r in compare_result["components"]]
        series = {f"{n}: {compare_result['sides'][n]['label']}": [r[n]["median_ms"] if n in r else None
                                                                  for r in compare_result["components"]]
                  for n in names}
        legend = table_html([{"side": n, **{k: compare_result["sides"][n][k] for k in ("label", "path")}}
                             for n in names], ["side", "label", "path"])
        rows = []
        for r in compare_result["components"]:
            row = {"case": _case(r)}
            for n in names:
                row[f"{n} ms"] = r[n]["median_ms"] if n in r else "-"
            for n in names[1:]:
                row[f"{n}/A"] = r.get("ratio_vs_a", {}).get(n, "-")
            rows.append(row)
        e2e = compare_result["end_to_end"]
        e2e_rows = [{"side": n, "steps": e2e[n]["steps"], "guidance": e2e[n]["guidance"],
                     "end to end ms": e2e[n].get("e2e_ms", "-"),
                     "speedup vs A": e2e.get("speedup_vs_a", {}).get(n, "-" if n != "A" else 1.0)} for n in names]
        sections.append(("Side by side (alternating calls in one process)", legend
                         + _bars(cases, series, "median ms (log)", "per-component median, alternating")))
        sections.append(("Ratios to side A", table_html(rows, list(rows[0]))))
        if any("e2e_ms" in e2e[n] for n in names):  # a run limited to some components has none
            sections.append(("Composed end to end: text + steps x UNet step + decoder",
                             table_html(e2e_rows, list(e2e_rows[0]))
                             + _bars(["end to end"], {n: [e2e[n].get("e2e_ms")] for n in names}, "ms (log)",
                                     "composed end-to-end latency")))
        machine = machine or compare_result["machine"]
    sections.append(("Machine", _machine_html(machine)))
    return write_page(path, title, sections)


def read_bench_results(paths) -> tuple[list[dict], dict | None]:
    """Sort saved JSON files into ``bench`` results and (at most one) ``bench compare`` result."""
    from pocketdiff.pipedir import read_json

    benches, comparison = [], None
    for p in map(Path, paths):
        data = read_json(p)
        if isinstance(data, dict) and "sides" in data and "components" in data:
            if comparison is not None:
                raise PocketdiffError(f"{p}: a report takes at most one bench compare result")
            comparison = data
        elif isinstance(data, dict) and "backend" in data and "components" in data:
            benches.append(data)
        else:
            raise PocketdiffError(f"{p} is neither a `bench --json` nor a `bench compare --json` result")
    return benches, comparison


NOT_LOSSES = ("step", "blocks_skipped")  # logged beside the losses, not plotted with them


def build_logs(workdir: Path) -> dict[str, list[dict]]:
    """Every training log under ``workdir/*.work``, by job. The evolution's short fine-tunes (one job per
    iteration, ``.../iter_NNN``) are joined into one curve, steps counted on from one to the next."""
    from pocketdiff.distill.loop import read_log

    logs: dict[str, list[dict]] = {}
    for f in sorted(workdir.glob("*.work/**/log.jsonl")):
        rows, job = read_log(f.parent), f.parent.relative_to(workdir)
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


def write_build_report(ctx) -> Path:
    """``pocketdiff build``'s report stage: ``WORKDIR/report/index.html`` from the other stages' outputs
    (``ctx`` is a ``build.Context``); the numbers are read from the eval and bench JSON, not recomputed."""
    from pocketdiff.generate import GenerateConfig, generate_many
    from pocketdiff.pipedir import read_json
    from pocketdiff.toyworld.demo import DEMO_PROMPTS

    r, w = ctx.recipe, ctx.workdir
    sections: list[tuple[str, str]] = []
    evals = {n: read_json(w / "eval" / f"{n}.json") for n in ("teacher", "student") if (w / "eval" / f"{n}.json").is_file()}
    if "export" in r.stages:
        student_steps = read_json(ctx.student_bundle() / "manifest.json")["defaults"]["steps"]
        g = r.export.guidance
        teacher = generate_many(list(DEMO_PROMPTS), GenerateConfig("", steps=r.eval.teacher_steps, guidance=g, seed=0,
                                                                   scheduler=r.eval.teacher_scheduler),
                                pipeline_dir=ctx.teacher)
        student = generate_many(list(DEMO_PROMPTS), GenerateConfig("", steps=student_steps, guidance=g, seed=0),
                                bundle_dir=ctx.student_bundle())
        from pocketdiff.benchmarks.quality import image_grid

        grid = image_grid(np.concatenate([teacher, student]), cols=len(DEMO_PROMPTS), scale=4)
        prompts = "".join(f"<li>{html.escape(p)}</li>" for p in DEMO_PROMPTS)
        sections.append(("Teacher vs student (same prompts, same seeds)",
                         f"<p>Top row: the teacher, {r.eval.teacher_scheduler} {r.eval.teacher_steps} steps (its "
                         f"pipeline). Bottom row: the student bundle, {student_steps} steps, on the torch-free "
                         f"runtime (onnxruntime). Guidance {g}; image i has seed i.</p><ol>{prompts}</ol>"
                         f"<img src='{png_data_uri(grid)}'>"))
    if evals:
        if r.eval.real:  # the real-checkpoint protocol: Inception FID and CLIP score
            rows = [{"model": n, "steps": e["steps"], "FID (Inception)": e["fid_inception"],
                     "CLIP score": e["clip_score"], "source": e["source"]} for n, e in evals.items()]
        else:
            rows = [{"model": n, "steps": e["steps"], "FID": e["fid"], "CLIP score": e["clip_score"],
                     "attribute accuracy": e["attribute_accuracy"],
                     "accuracy (held-out)": e["attributes"].get("split=heldout", {}).get("all", "-"),
                     "source": e["source"]} for n, e in evals.items()]
        prompts = r.eval.captions if r.eval.real else r.eval.prompts
        sections.append((f"Quality ({prompts}, n={r.eval.n}, seed {r.eval.seed}; eval/*.json)",
                         table_html(rows, list(rows[0]))))
    if (w / "bench" / "compare.json").is_file():
        res = read_json(w / "bench" / "compare.json")
        rows = [{"component": c["component"], "batch": c["batch"], "teacher ms": c["A"]["median_ms"],
                 "student ms": c["B"]["median_ms"], "student / teacher": c["ratio_vs_a"]["B"]}
                for c in res["components"] if "A" in c and "B" in c]
        e = res["end_to_end"]
        e2e = [{"side": n, "steps": e[n]["steps"], "guidance": e[n]["guidance"], "end to end ms": e[n].get("e2e_ms", "-"),
                "speedup": e.get("speedup_vs_a", {}).get(n, 1.0 if n == "A" else "-")} for n in ("A", "B")]
        sections.append(("Latency (onnxruntime, one process, alternating; bench/compare.json)",
                         "<p>A = the teacher bundle, B = the student bundle.</p>" + table_html(rows, list(rows[0]))
                         + "<p>Composed end to end: text encoder + steps × UNet step + decoder.</p>"
                         + table_html(e2e, list(e2e[0]))))
    sd15 = []
    for f in r.report.sd15_results:
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
    return write_page(w / "report" / "index.html", r.report.title, sections)
