"""docs/ddsm_toy.{md,json} and plots from scripts/ddsm_toy.py's results (called by it; no models here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COMMAND = "make ddsm-toy   # = python scripts/ddsm_toy.py (about 1 h on 2 cores; cached under build/ddsm/)"


def _steps(widths) -> str:
    return " ".join(f"{w:g}" for w in widths)


def _table(setting: dict) -> list[str]:
    full = setting["rows"]["uniform 1"]
    out = ["| schedule | UNet MACs / image (CFG) | vs full | FID | attribute acc. | rephrased acc. | CLIP score |",
           "|---|---|---|---|---|---|---|"]
    for name, r in setting["rows"].items():
        label = "full width (1.0)" if name == "uniform 1" else name
        out.append(f"| {label} | {r['macs'] / 1e9:.3f} G | {r['macs'] / full['macs']:.3f}x | {r['fid']:.3f} | "
                   f"{r['attribute_accuracy']:.3f} | {r['accuracy_rephrased']:.3f} | {r['clip_score']:.2f} |")
    return out


def plot_pareto(result: dict, path: Path) -> None:
    settings = result["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.2), squeeze=False)
    for ax, (tag, st) in zip(axes[0], settings.items()):
        full = st["rows"]["uniform 1"]["macs"]
        uni = sorted((r["macs"] / full, r["fid"], name) for name, r in st["rows"].items() if name.startswith("uniform"))
        ax.plot([u[0] for u in uni], [u[1] for u in uni], "s-", color="#ff7f0e", label="uniform widths")
        for x, y, name in uni:
            ax.annotate(name.split()[1], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        f = st["rows"]["found"]
        ax.plot([f["macs"] / full], [f["fid"]], "*", ms=15, color="#d62728", label="found schedule")
        t = st["rows"]["teacher (original)"]
        ax.plot([1.0], [t["fid"]], "D", color="#2ca02c", label="original teacher")
        ax.axhline(1.05 * st["rows"]["uniform 1"]["fid"], ls="--", color="grey", lw=1, label="1.05x full-width FID")
        ax.axvline(0.55, ls=":", color="grey", lw=1, label="45% fewer MACs")
        ax.set_xlabel("UNet MACs per image / full width")
        ax.set_ylabel("FID (toy CLIP features, 1000 prompts)")
        ax.set_title(f"{tag.replace('-', ', ')} steps")
        ax.legend(fontsize=8)
    fig.suptitle("DDSM on the toy teacher: compute against FID")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_pareto(result, Path(f"{out}_pareto.png"))
    exp = result["experiment"]
    tr = exp["train"]
    lines = [
        "# DDSM on the toy teacher: a width per step",
        "",
        f"Reproduce: `{COMMAND}`. Numbers: `{out.name}.json`; plots: `{out.name}_pareto.png` and one search plot "
        "per setting.",
        "",
        "The toy teacher's UNet (3 levels of 32, 64, 128 channels, 16 GroupNorm groups, 4 heads) is made slimmable "
        "(`pocketdiff/architectures/slimmable_unet.py`), sandwich-trained at widths "
        f"{', '.join(f'{w:g}' for w in tr['widths'])} (`pocketdiff ddsm-train`: {tr['steps']} steps, batch "
        f"{tr['batch_size']}, lr {tr['lr']:g} {tr['lr_schedule']}, the full, the smallest and {tr['n_random']} random "
        "width per step, denoising + output-KD loss from the frozen teacher), then searched per step "
        "(`pocketdiff ddsm-search`, fitness = latent-MSE proxy + lam x MACs ratio). Every row below is the "
        f"same {exp['n_eval']} toy-val prompts and seeds (seed {exp['seed']}), guidance 2, on onnxruntime through "
        "the runtime's loop with the `ddsm` policy on one bundle that holds every width; the original teacher row "
        "is diffusers' pipeline in torch.",
        "",
        "Channels per level at each width (multiples of the 16 groups; the 32-channel level can only be 16 or 32, "
        "so 0.625 and 0.5 share it, as do 0.75 and 0.875):",
        "",
        "| width | channels | UNet MACs per call (batch 2) |",
        "|---|---|---|",
        *[f"| {w} | {result['channels'][w]} | {m / 1e9:.4f} G |" for w, m in result["macs_per_call_batch2"].items()],
        "",
    ]
    last = result["train_last_log_row"]
    lines += [f"Sandwich training's last logged losses (step {last['step']}, mean of the last 25 steps): "
              + ", ".join(f"`{k}` {v:.4f}" for k, v in last.items() if "@" in k) + ".", ""]
    table = json.loads(Path(result["width_latency_table"]).read_text())
    lines += ["onnxruntime latency per width (`pocketdiff bench` of the all-widths bundle, each width in its own "
              f"process, 2 threads; `{result['width_latency_table']}`): on the toy UNet (8x8 latents) a call is "
              "dominated by per-op overhead, so time falls far less than MACs:", "",
              "| role | batch | median ms | min ms |", "|---|---|---|---|",
              *[f"| {r['component']} | {r['batch']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} |"
                for r in table["components"] if r["component"].startswith("unet")], ""]
    for tag, st in result["settings"].items():
        c, t = st["config"], st["targets"]
        shutil.copy(st["search_plot"], out.parent / f"{out.name}_search_{tag}.png")
        lines += [
            f"## {c['scheduler']}, {c['steps']} steps",
            "",
            f"Found schedule (width per step, first step first): `{_steps(st['found_widths'])}`",
            "",
            *_table(st),
            "",
            "Targets against the full width (the sandwich-trained network at 1.0, same bundle, same sampler):",
            "",
            f"- UNet MACs per image: {100 * t['macs_reduction']:.1f}% lower (target >= 45%: "
            f"{'met' if t['met']['macs >= 45% lower'] else 'MISSED'});",
            f"- onnxruntime UNet time per image, from one `bench compare` run's traces (full {st['unet_ms_per_image']['full']:.1f} ms, "
            f"found {st['unet_ms_per_image']['found']:.1f} ms): {100 * t['unet_ms_reduction']:.1f}% lower (target >= 35%: "
            f"{'met' if t['met']['onnxruntime UNet time >= 35% lower'] else 'MISSED'});",
            f"- FID {t['fid_ratio']:.3f}x the full width's (target <= 1.05x: "
            f"{'met' if t['met']['FID <= 1.05x full width'] else 'MISSED'});",
            f"- attribute accuracy {t['accuracy_delta_points']:+.1f} points (target within 1: "
            f"{'met' if t['met']['accuracy within 1 point'] else 'MISSED'}).",
            "",
            f"Against the original teacher at the same sampler: FID {t['fid_ratio_vs_original_teacher']:.3f}x, "
            f"accuracy {t['accuracy_delta_points_vs_original_teacher']:+.1f} points.",
            "",
            f"Search: {len(st['search']['history'])} generations, population {c['population']}, lam {c['lam']:g}, proxy "
            f"on {c['n_prompts']} val captions; plot `{out.name}_search_{tag}.png` (fitness per generation; every scored "
            "schedule, cost against proxy, with the Pareto front and the uniform widths).",
            "",
            f"![search {tag}]({out.name}_search_{tag}.png)",
            "",
        ]
    lines += [f"![compute against FID]({out.name}_pareto.png)", ""]
    Path(f"{out}.md").write_text("\n".join(lines))
