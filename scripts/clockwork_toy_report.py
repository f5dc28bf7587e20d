"""docs/clockwork_toy.{md,json} and plots from scripts/clockwork_toy.py's results (called by it; no models here)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COMMAND = "make clockwork-toy   # = python scripts/clockwork_toy.py (cached under build/clockwork/)"


def _row_label(name: str, r: dict) -> str:
    if name == "without":
        return "without Clockwork"
    kind, p = name.split()
    if p == "searched":
        return f"{kind} adaptor, searched clock: light steps {r['light_steps']}"
    return f"{kind} adaptor, period {p[1:]}" + (" (every step full)" if p == "p1" else "")


def _table(st: dict) -> list[str]:
    base = st["rows"]["without"]
    out = ["| run | UNet MACs / image | vs without | FID | attribute acc. | rephrased acc. | CLIP score |",
           "|---|---|---|---|---|---|---|"]
    for name, r in st["rows"].items():
        out.append(f"| {_row_label(name, r)} | {r['macs'] / 1e6:.1f} M | {r['macs'] / base['macs']:.3f}x | "
                   f"{r['fid']:.3f} | {r['attribute_accuracy']:.3f} | {r['accuracy_rephrased']:.3f} | "
                   f"{r['clip_score']:.2f} |")
    return out


def _finish(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_periods(st: dict, title: str, path: Path) -> None:
    """FID and attribute accuracy against the clock period, trained and identity adaptor."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    base = st["rows"]["without"]
    for ax, key, label in ((axes[0], "fid", "FID (toy, lower is better)"),
                           (axes[1], "attribute_accuracy", "attribute accuracy")):
        for kind, style in (("trained", "o-"), ("identity", "s--")):
            pts = sorted((r["period"], r[key]) for n, r in st["rows"].items() if n.startswith(kind) and r["period"])
            if kind == "identity":  # period 1 is every step full: the same for both adaptors
                pts = [(1, st["rows"]["trained p1"][key]), *pts]
            ax.plot([p for p, _ in pts], [v for _, v in pts], style, label=f"{kind} adaptor")
        ax.axhline(base[key], color="grey", lw=0.8, ls=":", label="without Clockwork")
        if key == "fid":
            ax.axhline(1.05 * base[key], color="red", lw=0.8, ls=":", label="target: 1.05x")
        else:
            ax.axhspan(base[key] - 0.01, base[key] + 0.01, color="red", alpha=0.1, label="target: within 1 point")
        ax.set_xlabel("clock period (1: every step full)")
        ax.set_ylabel(label)
        ax.set_xticks(sorted({r["period"] for r in st["rows"].values() if r["period"]}))
        ax.legend(fontsize=8)
    fig.suptitle(title)
    _finish(fig, path)


def plot_search(st: dict, title: str, path: Path) -> None:
    """Proxy against UNet MACs for every set of light steps, the MACs bound and the chosen set."""
    sr = st["search"]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.scatter([p["macs_ratio"] for p in sr["points"]], [p["proxy"] for p in sr["points"]], s=14, label="light-step sets")
    c = sr["chosen"]
    ax.scatter([c["macs_ratio"]], [c["proxy"]], s=60, marker="*", color="red", label=f"chosen {c['light_steps']}")
    ax.axvline(sr["macs_target"], color="grey", lw=0.8, ls=":", label=f"MACs bound {sr['macs_target']:.2f}x")
    ax.set_xlabel("UNet MACs per image / without Clockwork")
    ax.set_ylabel("proxy: relative final-latent error")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _finish(fig, path)


def plot_loss(st: dict, title: str, path: Path) -> None:
    log = st["train_log"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, style in (("output", "-"), ("feature", "-"), ("identity_feature", "--")):
        ax.plot([r["step"] for r in log], [r[key] for r in log], style, label=key)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _finish(fig, path)


def _setting_md(name: str, st: dict, stem: Path) -> list[str]:
    if "skipped" in st:
        return [f"## {name}", "", f"Skipped: {st['skipped']}.", ""]
    tag = name.replace(" ", "_").replace("+", "p")
    plot_periods(st, f"Clockwork, {name}: quality against the clock period (1000 prompts)",
                 stem.parent / f"{stem.name}_{tag}_periods.png")
    plot_loss(st, f"adaptor training, {name}", stem.parent / f"{stem.name}_{tag}_loss.png")
    plot_search(st, f"clock search, {name}", stem.parent / f"{stem.name}_{tag}_search.png")
    t, s, m = st["targets"], st["schedule"], st["macs_per_call"]
    ms = st["unet_ms_per_image"]
    met = "\n".join(f"- {k}: **{'met' if v else 'missed'}**" for k, v in t["met"].items())
    base = st["rows"]["without"]
    ok = [r["period"] for n, r in st["rows"].items() if n.startswith("trained") and (r["period"] or 0) > 1
          and r["fid"] <= 1.05 * base["fid"] and abs(r["attribute_accuracy"] - base["attribute_accuracy"]) <= 0.01]
    sr = st["search"]
    cheapest = min((r for r in st["rows"].values() if r["period"]), key=lambda r: r["macs"])
    reach = sorted(r["period"] for n, r in st["rows"].items()
                   if n.startswith("trained") and r["period"] and r["macs"] <= 0.7 * base["macs"])
    search = (f"The search against quality: of the periods tried with the trained adaptor, "
              f"{', '.join(map(str, ok)) if ok else 'none'} keep FID within 1.05x and accuracy within 1 point of the "
              f"model without Clockwork. Periods bringing UNet MACs at least 30% down: "
              f"{', '.join(map(str, reach)) if reach else 'none'} (the cheapest tried, period {cheapest['period']}, is "
              f"{cheapest['macs'] / base['macs']:.3f}x). Then every set of light steps (the first and last full) was "
              f"scored by a proxy, the final latents' squared distance to every-step-full relative to their mean "
              f"square on {sr['n_prompts']} val captions ({len(sr['points'])} sets); the shipped clock is the lowest "
              f"proxy at or under {sr['macs_target']:.2f}x the UNet MACs (if none is, the cheapest set): light steps "
              f"{st['light_steps']}, proxy {sr['chosen']['proxy']:.4f}, {sr['chosen']['macs_ratio']:.3f}x the MACs; "
              f"its FID and accuracy on 1000 prompts are the 'searched' rows.")
    last = st["train_log"][-1]
    return [
        f"## {name}", "",
        f"Sampler: {s['scheduler']}, {s['steps']} steps, guidance {s['guidance']:g}, UNet policy without Clockwork: "
        f"`{st['native_policy']}` (calls at batch {st['call_batch']}). Shipped clock (searched, below): light steps "
        f"{st['light_steps']} (the first and last steps are always full); the adaptor was trained for cache ages 1 to "
        f"{st['train']['max_gap']}.", "",
        "MACs per UNet call at batch {b}: plain `unet` {u:.1f} M, `unet_cw_full` {f:.1f} M, `unet_cw_light` {l:.1f} M "
        "({r:.3f}x the full UNet).".format(b=st["call_batch"], u=m["unet"] / 1e6, f=m["unet_cw_full"] / 1e6,
                                            l=m["unet_cw_light"] / 1e6, r=m["unet_cw_light"] / m["unet"]), "",
        *_table(st), "",
        search, "",
        f"![periods]({stem.name}_{tag}_periods.png)", "",
        f"![search]({stem.name}_{tag}_search.png)", "",
        "Targets, the chosen clock against the same bundle without Clockwork:", "",
        f"- UNet MACs per image: {100 * t['macs_reduction']:.1f}% lower",
        f"- onnxruntime UNet time per image (one `bench compare` run, the traces x the medians): "
        f"{ms['without']:.2f} ms without, {ms['clockwork']:.2f} ms with: {100 * t['unet_ms_reduction']:.1f}% lower",
        f"- FID ratio: {t['fid_ratio']:.3f}; attribute accuracy: {t['accuracy_delta_points']:+.1f} points", "",
        met, "",
        f"Adaptor training: last logged row (step {last['step']}): output MSE {last['output']:.5f}, feature MSE "
        f"{last['feature']:.5f} (the identity adaptor's on the same examples: {last['identity_feature']:.5f}).", "",
        f"![loss]({stem.name}_{tag}_loss.png)", "",
    ]


def write_report(result: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Clockwork on the toy teacher and the shipped student", "",
             f"Reproduce: `{COMMAND}`. Each evaluation: {result['experiment']['n_eval']} toy-val prompts, seeds "
             f"{result['experiment']['seed']}.. (the same for every row), generated by the runtime's own loop on "
             "the onnxruntime bundle; FID and attribute accuracy by the toy evaluator (`pocketdiff eval`'s). "
             "'Without Clockwork' is the same bundle's plain `unet` under the UNet's own policy. Figures: "
             f"`{stem.name}.json`.", ""]
    for name, st in result["settings"].items():
        lines += _setting_md(name, st, stem)
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
