"""HTML pages: one self-contained file, images embedded as PNG data URIs."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from pocketdiff.errors import PocketdiffError
from pocketdiff.pipedir import atomic_output_file, read_json


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
