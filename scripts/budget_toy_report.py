"""docs/budget_toy.md and its plots from scripts/budget_toy.py's result (tables, the quality-steps curves, the steps
per prompt kind)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CHOICES = ("fixed", "oracle", "random", "predictor", "preset")
LABEL = {"fixed": "fixed", "oracle": "oracle", "random": "random (predictor's counts, shuffled)",
         "predictor": "predictor (target matched here)", "preset": "predictor (shipped preset)"}


def _curves_plot(result: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, style in (("predictor", "-"), ("oracle", "--")):
        pts = sorted(result["curves"][name], key=lambda p: p[1])
        ax.plot([p[1] for p in pts], [p[2] for p in pts], style, label=f"{name} (target swept)")
    fx = result["curves"]["fixed"]
    ax.plot([p[1] for p in fx], [p[2] for p in fx], "ko", label="fixed step count")
    for s, pt in result["points"].items():
        ax.plot(pt["random"]["mean_steps"], pt["random"]["mean_dreamsim"], "rx")
        ax.plot(pt["preset"]["mean_steps"], pt["preset"]["mean_dreamsim"], "g^")
    ax.plot([], [], "rx", label="random, the predictor's mean steps")
    ax.plot([], [], "g^", label="shipped like-s presets")
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 0.3)  # the largest count's own distance is 0
    ax.set_xlabel("mean steps per prompt")
    ax.set_ylabel("mean DreamSim-like distance to the 8-step image")
    ax.set_title("toy student, 1000 toy-val prompts")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _groups_plot(result: dict, s: str, path: Path) -> None:
    groups = result["points"][s]["by_group"]
    names = [(g, v) for g in ("kind", "background", "split") for v in groups[g]]
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    width = 0.27
    for i, who in enumerate(("predictor", "oracle", "preset")):
        ax.bar([x + (i - 1) * width for x in range(len(names))], [groups[g][v][who] for g, v in names], width,
               label=who)
    ax.axhline(int(s), color="k", lw=0.8, ls=":", label=f"fixed {s}")
    ax.set_xticks(range(len(names)), [f"{v}\n(n={groups[g][v]['n']})" for g, v in names], fontsize=7)
    ax.set_ylabel("mean steps")
    ax.set_title(f"steps per prompt kind at fixed {s}'s mean similarity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _row(name: str, e: dict) -> str:
    saved = f"{100 * e['steps_saved']:.1f}%" if "steps_saved" in e else ""
    gap = f"{100 * e['gap_closed']:.0f}%" if e.get("gap_closed") is not None else ""
    return (f"| {LABEL[name]} | {e['mean_steps']:.3f} | {saved} | {gap} | {e['mean_dreamsim']:.5f} | {e['fid']:.3f} | "
            f"{100 * e['attribute_accuracy']:.1f} | {100 * e['accuracy_by_kind']['single']:.1f} / "
            f"{100 * e['accuracy_by_kind']['pair']:.1f} |")


def _targets(result: dict, bench_ratio: float) -> list[str]:
    """The issue's targets at each operating point, met or missed, with the numbers."""
    out = ["## Targets", "", "| fixed s | mean steps vs fixed (target >= 25% fewer) | accuracy vs fixed (within 1 point) "
           "| gap to the oracle closed (target >= 50%) |", "|---|---|---|---|"]
    for s, pt in result["points"].items():
        p, f = pt["predictor"], pt["fixed"]
        acc = 100 * (p["attribute_accuracy"] - f["attribute_accuracy"])
        ok = lambda good: "met" if good else "**missed**"  # noqa: E731
        gap = p["gap_closed"]
        out.append(f"| {s} | {p['mean_steps']:.3f} = {100 * p['steps_saved']:.1f}% fewer: {ok(p['steps_saved'] >= 0.25)} | "
                   f"{acc:+.1f} points: {ok(abs(acc) <= 1)} | "
                   + (f"{100 * gap:.0f}%: {ok(gap >= 0.5)} |" if gap is not None else "n/a |"))
    out += ["", f"Predictor overhead: {100 * bench_ratio:.2f}% of a batch-1 UNet call on onnxruntime (target <= 2%: "
                f"{'met' if bench_ratio <= 0.02 else '**missed**'}).", ""]
    return out


def write_report(result: dict, docs: Path) -> Path:
    cfg, head = result["config"], str(result["config"]["headline"])
    _curves_plot(result, docs / "budget_toy_curves.png")
    _groups_plot(result, head, docs / "budget_toy_groups.png")
    tr = result["train_report"]
    rt, bench = result["runtime"], {(r["component"], r["batch"]): r for r in result["bench"]["components"]}
    sb, unet = bench[("step_budget", 1)]["median_ms"], bench[("unet", 1)]["median_ms"]
    metrics = list(result["spec"]["metrics"])
    lines = [
        "# BudgetFusion on the toy student: per-prompt step budgets",
        "",
        "Made by `make budget-toy` (`python scripts/budget_toy.py`; the numbers are in "
        "[budget_toy.json](budget_toy.json)). The student is the shipped one (`make toy-full`'s build/toy-full/steps: "
        f"4-step guidance-embedded DDIM, guidance {cfg['data']['guidance']:g}). Method and files: "
        "[budget.md](budget.md).",
        "",
        "## The data and the predictor",
        "",
        f"- `budget-data`: {result['table']['train_prompts']} toy-train prompts (training) and "
        f"{result['table']['val_prompts']} toy-val prompts (the evaluation below; `pocketdiff eval`'s prompts and "
        f"seeds), each at S = {result['spec']['step_counts']} from one seed; every metric against the "
        f"{result['spec']['step_counts'][-1]}-step image.",
        "- Mean curves on the toy-val prompts (per step count):",
        "",
        "| metric | " + " | ".join(str(s) for s in result["spec"]["step_counts"]) + " |",
        "|---|" + "---|" * len(result["spec"]["step_counts"]),
        *(f"| {m} | " + " | ".join(f"{v:.4g}" for v in result["table"]["mean_curves"][m]) + " |" for m in metrics),
        "",
        f"- `budget-train`: {tr['n_train']} prompts trained on, {tr['n_heldout']} held out; "
        f"{cfg['train']['steps']} steps per kind. Held-out error per metric (MAE in the metric's units, R^2 over the "
        "non-reference step counts):",
        "",
        "| kind | params | weighted std. MSE | " + " | ".join(f"{m} MAE / R^2" for m in metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
        *(f"| {k}{' (kept)' if k == tr['kept'] else ''} | {v['params']} | {v['heldout']['weighted_std_mse']:.4f} | "
          + " | ".join(f"{v['heldout'][m]['mae']:.4g} / {v['heldout'][m]['r2']:.3f}" for m in metrics) + " |"
          for k, v in tr["kinds"].items()),
        "",
        *_targets(result, sb / unet),
        "## Step choices at equal mean perceptual similarity",
        "",
        "Perceptual similarity is the DreamSim-like distance to the 8-step image (lower is closer). For each fixed "
        "step count s: the predictor's target on that distance is matched on these 1000 prompts so its mean distance "
        "is at most fixed s's (the fewest mean steps that does); the oracle the same with the true distances; random "
        "deals the predictor's step counts to the prompts at random (same mean steps); the shipped preset `like-s` "
        "is the target `budget-train` calibrated on its own held-out training prompts (out of sample here). FID and "
        "attribute accuracy (single / pair) of each choice's images, against fresh renders as in `pocketdiff eval`.",
        "",
    ]
    for s, pt in result["points"].items():
        lines += [f"### fixed {s} steps", "",
                  "| choice | mean steps | steps saved | gap closed | mean distance | FID | accuracy % | single / pair |",
                  "|---|---|---|---|---|---|---|---|",
                  *(_row(name, pt[name]) for name in CHOICES), ""]
    p = result["points"][head]
    lines += [
        "![mean distance against mean steps](budget_toy_curves.png)",
        "",
        f"Which prompts get fewer steps (at fixed {head}'s similarity; the oracle shows what the seed adds):",
        "",
        "![steps per prompt kind](budget_toy_groups.png)",
        "",
        "| group | n | predictor | oracle | preset |",
        "|---|---|---|---|---|",
        *(f"| {g}={v} | {e['n']} | {e['predictor']:.2f} | {e['oracle']:.2f} | {e['preset']:.2f} |"
          for g, vals in p["by_group"].items() for v, e in vals.items()),
        "",
        "## Runtime",
        "",
        f"- onnxruntime, 2 threads, the bundle's `generate` on the first {rt['n']} toy-val prompts, alternating fixed "
        f"{rt['fixed_steps']} steps and `--steps auto` (default preset `{rt['preset']}`, mean {rt['auto_mean_steps']:.2f} "
        f"steps here): {rt['fixed_ms']:.1f} ms -> {rt['auto_ms']:.1f} ms per image ({rt['auto_over_fixed']:.3f}x; "
        f"{rt['saved_ms_per_prompt']:.1f} ms saved per prompt), the predictor's call {rt['step_budget_ms_in_trace']:.3f} ms "
        "in the traces.",
        f"- `pocketdiff bench --bundle build/budget/bundle --backend onnx` ({cfg['bench_repeat']} repeats, median): "
        f"`step_budget` {sb:.4f} ms, one batch-1 `unet` call {unet:.3f} ms: overhead {100 * sb / unet:.2f}% of a "
        "UNet step.",
        "- Export: `step_budget` to ONNX, ExecuTorch and Core ML in the same bundle; parity per target in "
        "budget_toy.json (`manifest_components`; Core ML converted and spec-checked, parity needs macOS).",
        "",
        f"Wall time of the run: {result['wall_time_s'] / 60:.1f} min on this machine (cached pieces not redone).",
        "",
    ]
    out = docs / "budget_toy.md"
    out.write_text("\n".join(lines))
    return out
