"""docs/adadiff_toy.{md,json} and plots from scripts/adadiff_toy.py's results (called by it; no models here)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COMMAND = "make adadiff-toy   # = python scripts/adadiff_toy.py (cached under build/adadiff/)"
LEVEL_COLOURS = {0: "tab:grey", 1: "tab:blue", 2: "tab:orange", 3: "tab:green", 4: "tab:purple"}


def _label(name: str, r: dict) -> str:
    if name == "full":
        return "full UNet (plain `unet`, cfg)"
    what = {"weighted": "uncertainty-weighted heads", "plain": "plain layer-wise heads (ablation)",
            "backbone": "weighted heads + unfrozen backbone"}[name.split()[0]]
    tag = "calibrated" if " " not in name else "curve point"
    return f"{what}, threshold {r['threshold']:.4f} ({tag})"


def _table(st: dict) -> list[str]:
    out = ["| run | UNet MACs / image vs full | calibration proxy | FID | attribute acc. | rephrased acc. | CLIP |",
           "|---|---|---|---|---|---|---|"]
    for name, r in st["rows"].items():
        proxy = f"{r['proxy']:.4f}" if "proxy" in r else "-"
        out.append(f"| {_label(name, r)} | {r['macs']:.3f}x | {proxy} | {r['fid']:.3f} | {r['attribute_accuracy']:.3f} "
                   f"| {r['accuracy_rephrased']:.3f} | {r['clip_score']:.2f} |")
    return out


def _finish(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curve(st: dict, title: str, path: Path) -> None:
    """Left: the calibration curve (proxy vs MACs) per training; right: FID of the evaluated runs vs MACs."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4))
    ax = axes[0]
    curves = {"weighted": st["curve"], **st["variant_curves"]}
    for (name, c), colour in zip(curves.items(), ("tab:blue", "tab:orange", "tab:green")):
        pts = sorted(c["curve"], key=lambda p: p["macs"])
        ax.plot([p["macs"] for p in pts], [p["proxy"] for p in pts], "o-", ms=3, color=colour, label=name)
        ax.plot([c["chosen"]["macs"]], [c["chosen"]["proxy"]], "*", ms=13, color=colour)
    ax.axvline(0.70, color="red", lw=0.8, ls=":", label="target: 30% fewer MACs")
    ax.set_xlabel("UNet MACs per image / the full UNet's")
    ax.set_ylabel("final-latent error to the full UNet (calibration prompts)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("calibration sweep over thresholds (star: chosen)", fontsize=9)
    ax = axes[1]
    full = st["rows"]["full"]
    for name, r in st["rows"].items():
        marker = {"full": "s", "weighted": "o", "plain": "^", "backbone": "D"}[name.split()[0]]
        ax.plot([r["macs"]], [r["fid"]], marker, ms=8, label=_label(name, r))
    ax.axhline(1.05 * full["fid"], color="red", lw=0.8, ls=":", label="target: FID <= 1.05x full")
    ax.axvline(0.70, color="red", lw=0.8, ls="--")
    ax.set_xlabel("UNet MACs per image / the full UNet's")
    ax.set_ylabel("FID (toy, 1000 val prompts; lower is better)")
    ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    _finish(fig, path)


def plot_histogram(st: dict, title: str, path: Path) -> None:
    """Per step (its timestep on the axis), the share of prompts that stopped at each exit level or ran in full."""
    h = st["histogram"]
    counts, steps = h["counts"], len(h["counts"])
    n_levels = max(len(c) for c in counts)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * steps + 3), 3.8))
    bottom = [0.0] * steps
    for level in range(n_levels - 1, -1, -1):
        share = [(c[level] if level < len(c) else 0) / h["n"] for c in counts]
        ax.bar(range(steps), share, bottom=bottom, color=LEVEL_COLOURS[level],
               label="full UNet" if level == 0 else f"exit at level {level}")
        bottom = [b + v for b, v in zip(bottom, share)]
    ax.set_xticks(range(steps))
    ax.set_xticklabels([f"{int(t)}" for t in h["timesteps"]], rotation=90, fontsize=7)
    ax.set_xlabel("step (timestep)")
    ax.set_ylabel(f"share of {h['n']} val prompts")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=9)
    _finish(fig, path)


def plot_training(logs: dict, path: Path) -> None:
    """The logged terms per exit: the UEM's regression and the exit's error to the full UNet it estimates."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, log in logs.items():
        for tag, ls in (("l2", "-"), ("l1", "--")):
            if f"err@{tag}" not in log[-1]:
                continue
            steps = [r["step"] for r in log]
            axes[0].plot(steps, [r[f"err@{tag}"] for r in log], ls, label=f"{name} {tag}")
            axes[1].plot(steps, [r[f"kd@{tag}"] for r in log], ls, label=f"{name} {tag}")
    axes[0].set_ylabel("tanh(mean |exit - full|) (the UEM's target)")
    axes[1].set_ylabel("kd: MSE(exit, full UNet)")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    _finish(fig, path)


def write_report(result: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    e = result["experiment"]
    lines = ["# AdaDiff on the toy teacher", "", f"Made by `{COMMAND}`; numbers in `{stem.name}.json`. Method and "
             "bundle layout: [adadiff.md](adadiff.md).", "",
             f"Every evaluation: {e['n_eval']} toy-val prompts at seeds {e['seed']}..{e['seed'] + e['n_eval'] - 1} "
             "(and the same scenes rephrased), onnxruntime through the runtime's loop; guidance 2. \"Full UNet\" is the "
             "same bundle's plain `unet` role under cfg. Thresholds come from `adadiff-calibrate` on "
             f"{e['calibrate']['n_prompts']} train-split captions (rule `{e['calibrate']['rule']}`, target "
             f"{e['calibrate']['target_macs']}x MACs); the ablation and the unfrozen-backbone heads are calibrated "
             "to the weighted heads' compute.", "",
             "Trainings (`adadiff-train`, the toy teacher, exits at levels 2 and 1):", ""]
    for name, cfg in e["trainings"].items():
        lines.append(f"- `{name}`: {cfg['steps']} steps, batch {cfg['batch_size']}, lr {cfg['lr']}, uncertainty "
                     f"weighting {cfg['uncertainty_weighting']}, backbone trained {cfg['train_backbone']}")
    lines += ["", "![training](adadiff_toy_train.png)", ""]
    plot_training(result["train_logs"], stem.parent / "adadiff_toy_train.png")
    for slug, st in result["settings"].items():
        lines += [f"## {slug}", ""]
        if "skipped" in st:
            lines += [f"Skipped: {st['skipped']}.", ""]
            continue
        t = st["targets"]
        lines += ["| target | value | met |", "|---|---|---|",
                  f"| UNet MACs per image >= 30% lower | {100 * t['macs_reduction']:.1f}% lower | "
                  f"{'yes' if t['met']['MACs >= 30% lower'] else '**no**'} |",
                  f"| onnxruntime UNet time per image >= 25% lower (one bench compare run) | "
                  f"{100 * t['unet_ms_reduction']:.1f}% lower ({st['unet_ms_per_image']['full']:.2f} -> "
                  f"{st['unet_ms_per_image']['adadiff']:.2f} ms) | "
                  f"{'yes' if t['met']['onnxruntime UNet time >= 25% lower'] else '**no**'} |",
                  f"| FID <= 1.05x the full UNet's | {t['fid_ratio']:.3f}x | "
                  f"{'yes' if t['met']['FID <= 1.05x full'] else '**no**'} |",
                  f"| attribute accuracy within 1 point | {t['accuracy_delta_points']:+.1f} points | "
                  f"{'yes' if t['met']['accuracy within 1 point'] else '**no**'} |", ""]
        lines += _table(st) + [""]
        lines += ["MACs per batch-1 call: " + ", ".join(f"`{k}` {v / 1e6:.2f} M" for k, v in
                                                          st["macs_per_call"].items()) + ".", "",
                  "The bench compare's traced prompts stopped at levels (per step): "
                  + "; ".join(" ".join(str(x) for x in lv) for lv in st["bench_traces_levels"]) + ".", ""]
        plot_curve(st, f"AdaDiff, toy teacher, {slug}", stem.parent / f"adadiff_toy_curve_{slug}.png")
        plot_histogram(st, f"exits per step, {slug}, threshold {st['rows']['weighted']['threshold']:.4f}",
                       stem.parent / f"adadiff_toy_exits_{slug}.png")
        lines += [f"![curve](adadiff_toy_curve_{slug}.png)", "", f"![exits](adadiff_toy_exits_{slug}.png)", ""]
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
