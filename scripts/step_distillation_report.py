"""The 8-step sampler stage report for a toy run: docs/step_distillation_toy.{md,json,png} + loss curves.

- the teacher (DDIM) at 50/16/8/4 steps and every student at the steps it was distilled for, on the
  same prompts and seeds (toy-val, ``--n`` prompts, seed 0, guidance 2): FID, CLIP score, attribute
  accuracy overall and on the held-out split, and UNet evaluations per image;
- an image grid over the same 8 prompts and seeds, one row per model;
- each round's loss curves (``vanilla`` and ``cfg`` terms).

Students are named NAME=WORKDIR (a ``distill-steps`` work dir): every finished round is a row.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pocketdiff.benchmarks.quality import EvalModels, evaluate_images, image_grid, prompt_set
from pocketdiff.pipedir import read_train_log
from pocketdiff.distill.steps import StepDistillConfig
from pocketdiff.pinned import trained_steps
from pocketdiff.generate import GenerateConfig, generate_many
from pocketdiff.pipedir import read_history
from pocketdiff.toyworld import TEACHER_GUIDANCE, TOY_TEACHER_DIR

DEFAULTS = asdict(StepDistillConfig())
TARGETS = ("8-step CFG student: FID ≤ the 50-step teacher's", "8-step CFG student: accuracy ≥ teacher (50) − 1 point",
           "8-step CFG student beats the teacher at 8 steps (FID and accuracy)",
           "8-step guidance-embedded student: accuracy within 2 points of the 8-step CFG student, half the UNet "
           "evaluations")


def rows_to_run(teacher: str, students: dict[str, Path], teacher_steps: list[int]) -> list[dict]:
    rows = [{"name": f"teacher, {n} steps", "model": "teacher", "pipeline": teacher, "steps": n, "scheduler": "ddim",
             "guidance_embed": False} for n in teacher_steps]
    for name, work in students.items():
        for rdir in sorted(Path(work).glob("round*"), key=lambda p: int(p.name[5:])):
            pipe = rdir / "pipeline"
            if not pipe.is_dir():
                continue
            rec = read_history(pipe)[-1].config
            rows.append({"name": f"{name}, {trained_steps(pipe)} steps", "model": name, "pipeline": str(pipe),
                         "steps": trained_steps(pipe), "scheduler": None, "guidance_embed": rec["guidance_embed"],
                         "round": rdir.name, "config": {**{k: rec[k] for k in ("cfg_prob", "w_min", "w_max", "iters",
                                                                                "batch_size", "lr", "start_steps")},
                                    # fields later than a round's record stand at their default (the old behaviour)
                                    **{k: rec.get(k, DEFAULTS[k]) for k in ("lr_schedule", "v_warmup_iters",
                                                                            "ema_decay")}},
                         "log": read_train_log(rdir / "train")})
    for r in rows:
        r["unet_evals_per_image"] = r["steps"] * (1 if r["guidance_embed"] or TEACHER_GUIDANCE <= 1 else 2)
    return rows


def plot_losses(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [r for r in rows if r.get("log")]
    cols = min(4, len(trained))
    n_rows = -(-len(trained) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.2 * cols, 2.8 * n_rows), squeeze=False)
    for ax in axes.flat[len(trained):]:
        ax.set_visible(False)
    for ax, r in zip(axes.flat, trained):
        steps = [e["step"] for e in r["log"]]
        for term in ("loss", "vanilla", "cfg"):
            ax.plot(steps, [e[term] for e in r["log"]], label=term, lw=1)
        ax.set_yscale("log")
        ax.set_title(f"{r['model']} {r['round']} ({r['steps']} steps)", fontsize=8)
        ax.set_xlabel("iteration", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(TOY_TEACHER_DIR / "pipeline"))
    p.add_argument("--eval-models", default=str(TOY_TEACHER_DIR))
    p.add_argument("--student", action="append", required=True, help="NAME=DISTILL_STEPS_WORKDIR (repeatable)")
    p.add_argument("--teacher-steps", default="50,16,8,4")
    p.add_argument("--n", type=int, default=1000, help="toy-val prompts")
    p.add_argument("--command", default="make steps-toy")
    p.add_argument("--out", default="docs/step_distillation_toy")
    args = p.parse_args(argv)
    students = {k: Path(v) for k, v in (s.split("=", 1) for s in args.student)}
    rows = rows_to_run(args.teacher, students, [int(s) for s in args.teacher_steps.split(",")])
    models = EvalModels.load(args.eval_models)
    items = prompt_set("toy-val", args.n, 0)
    prompts = [it.prompt for it in items]
    grid = []
    for r in tqdm(rows, desc="evaluate"):
        cfg = GenerateConfig(prompt="", steps=r["steps"], guidance=TEACHER_GUIDANCE, seed=0, scheduler=r["scheduler"])
        images = generate_many(prompts, cfg, pipeline_dir=r["pipeline"])
        res = evaluate_images(models, items, images, seed=0)
        r["metrics"] = {"fid": res["fid"], "clip_score": res["clip_score"],
                        "attribute_accuracy": res["attribute_accuracy"],
                        "accuracy_val": res["attributes"]["split=val"]["all"],
                        "accuracy_heldout": res["attributes"]["split=heldout"]["all"]}
        grid.append(images[:8])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.fromarray(image_grid(np.concatenate(grid), cols=8, scale=3)).save(out.with_name(out.name + "_grid.png"))
    plot_losses(rows, out.with_name(out.name + "_losses.png"))
    record = {"command": args.command, "n": args.n, "prompt_set": "toy-val", "seed": 0, "guidance": TEACHER_GUIDANCE,
              "grid_prompts": prompts[:8], "rows": [{k: v for k, v in r.items() if k != "log"} for r in rows]}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(record, out))
    print(out.with_suffix(".md").read_text())
    return 0


def render(r: dict, out: Path) -> str:
    rows = {x["name"]: x for x in r["rows"]}

    def m(name, key):
        return rows[name]["metrics"][key] if name in rows else None

    lines = ["# 8-step sampler on the toy teacher: stage report", "",
             f"Generated by `{r['command']}` (`scripts/step_distillation_report.py`): {r['n']} `{r['prompt_set']}` "
             f"prompts, seed {r['seed']}, guidance {r['guidance']}, the same prompts and initial latents for every row. "
             "The teacher samples with DDIM; each student with the DDIM (v-prediction, trailing spacing) it was "
             "distilled for, at its own step count.", "", "## Targets", ""]
    t50, c8, t8, e8 = "teacher, 50 steps", "cfg, 8 steps", "teacher, 8 steps", "embed, 8 steps"
    ok = lambda c: "met" if c else "**missed**"  # noqa: E731
    if all(n in rows for n in (t50, c8, t8)):
        lines += ["| target | measured | |", "|---|---|---|",
                  f"| {TARGETS[0]} | {m(c8, 'fid'):.3f} vs {m(t50, 'fid'):.3f} | {ok(m(c8, 'fid') <= m(t50, 'fid'))} |",
                  f"| {TARGETS[1]} | {m(c8, 'attribute_accuracy'):.3f} vs {m(t50, 'attribute_accuracy'):.3f} | "
                  f"{ok(m(c8, 'attribute_accuracy') >= m(t50, 'attribute_accuracy') - 0.01)} |",
                  f"| {TARGETS[2]} | FID {m(c8, 'fid'):.3f} vs {m(t8, 'fid'):.3f}; accuracy "
                  f"{m(c8, 'attribute_accuracy'):.3f} vs {m(t8, 'attribute_accuracy'):.3f} | "
                  f"{ok(m(c8, 'fid') < m(t8, 'fid') and m(c8, 'attribute_accuracy') > m(t8, 'attribute_accuracy'))} |"]
        if e8 in rows:
            lines.append(f"| {TARGETS[3]} | {m(e8, 'attribute_accuracy'):.3f} vs {m(c8, 'attribute_accuracy'):.3f}; "
                         f"{rows[e8]['unet_evals_per_image']} vs {rows[c8]['unet_evals_per_image']} evaluations | "
                         f"{ok(abs(m(e8, 'attribute_accuracy') - m(c8, 'attribute_accuracy')) <= 0.02)} |")
    lines += ["", "## All rows", "",
              "| model | steps | UNet evals / image | FID ↓ | CLIP score ↑ | accuracy ↑ | accuracy (val) | "
              "accuracy (held-out) |", "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        q = x["metrics"]
        lines.append(f"| {x['model']} | {x['steps']} | {x['unet_evals_per_image']} | {q['fid']:.3f} | "
                     f"{q['clip_score']:.2f} | {q['attribute_accuracy']:.3f} | {q['accuracy_val']:.3f} | "
                     f"{q['accuracy_heldout']:.3f} |")
    what = {"cfg": "CFG-aware distillation", "vanilla": "the same without the CFG-aware term (`--cfg-prob 0`, the "
            "ablation)", "embed": "the guidance-embedded single-pass student (`--guidance-embed --cfg-prob 1`)",
            "cfg-p05": "CFG-aware distillation at p = 0.5 (`--cfg-prob 0.5`)",
            "cfg-ema": "CFG-aware distillation with an EMA of the weights (`--ema-decay 0.999`)",
            "cfg-32": "CFG-aware distillation in two rounds, 32 → 16 → 8 (`--start-steps 32 --rounds 2`)"}
    present = [m for m in dict.fromkeys(x["model"] for x in r["rows"]) if m != "teacher"]
    lines += ["", "Students: " + "; ".join(f"`{m}` = {what.get(m, m)}" for m in present) + ".", "",
              "| student | round | cfg_prob | w range | iterations × batch | lr (schedule) | EMA decay | "
              "v warm-up before round 1 |", "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        if "config" in x:
            c = x["config"]
            lines.append(f"| {x['model']} | {x['round']} ({x['steps']} steps) | {c['cfg_prob']:g} | "
                         f"[{c['w_min']:g}, {c['w_max']:g}] | {c['iters']} × {c['batch_size']} | {c['lr']:g} "
                         f"({c['lr_schedule']}) | {c['ema_decay'] or 'none'} | {c['v_warmup_iters'] or 'none'} |")
    lines += ["", "## Samples (the first 8 prompts, seeds 0-7; rows in the order of the table)", "",
              f"![grid]({out.name}_grid.png)", "", "Prompts: " + "; ".join(f"{i}. {p}" for i, p in
                                                                          enumerate(r["grid_prompts"])), "",
              "## Loss curves (per round: `vanilla` + `cfg` = `loss`)", "", f"![losses]({out.name}_losses.png)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
