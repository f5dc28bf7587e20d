"""Write docs/toy_teacher.md from the teacher run's own records (no number is typed by hand).

Inputs: pocketdiff/toyworld/assets/recipe.json (wall times, VAE PSNR), build/eval/sweep_g*.json
(guidance sweep), docs/toy_teacher_eval.json (1000-image eval), docs/toy_baseline.md, plus a fresh
measurement of the checker on 2000 renders and of CLIP score on matched vs shuffled captions.
Usage: python scripts/toy_teacher_docs.py
"""

import json
from pathlib import Path


from pocketdiff.benchmarks.quality import EvalModels, attribute_report, prompt_set, reference_images
from pocketdiff.toyworld import TEACHER_GUIDANCE, TOY_TEACHER_DIR
from pocketdiff.toyworld.clip import clip_score

root = Path(__file__).resolve().parent.parent
rec = json.loads((TOY_TEACHER_DIR / "recipe.json").read_text())
m = rec["metrics"]
ev = json.loads((root / "docs/toy_teacher_eval.json").read_text())
sweep = {g: json.loads((root / f"build/eval/sweep_g{g}.json").read_text()) for g in ("2", "4", "7.5")
         if (root / f"build/eval/sweep_g{g}.json").is_file()}
models = EvalModels.load(TOY_TEACHER_DIR)
items = prompt_set("toy-val", 2000, seed=77)
refs = reference_images(items, seed=3)
chk = attribute_report(models, items, refs)
prompts = [it.prompt for it in items]
matched = clip_score(models.clip, models.tokenizer, refs, prompts).mean()
shuffled = clip_score(models.clip, models.tokenizer, refs, prompts[1:] + prompts[:1]).mean()
size_mb = sum(f.stat().st_size for f in (TOY_TEACHER_DIR / "pipeline").rglob("*.safetensors")) / 2**20


def acc(report, key):
    return report.get(key, {}).get("all", float("nan"))


wall = {k: v["wall_time_s"] / 60 for k, v in m.items()}
lines = [
    "# The toy teacher",
    "",
    "Shipped at `pocketdiff/toyworld/assets/` (`pipeline/` is a complete diffusers `StableDiffusionPipeline`;",
    "`clip/` and `checker/` are the evaluation models). Rebuild: `make teacher` (= `pocketdiff toy train-teacher",
    "--out build/teacher`). This page is written by `scripts/toy_teacher_docs.py` from the run's records.",
    "",
    "## Choices",
    "- 32×32 images, VAE factor 4 → 8×8×4 latents (a quarter of the UNet cost of 16×16 latents).",
    "- UNet: SD1.5's block types at width (32, 64, 128), 3 levels, `layers_per_block` 2, epsilon prediction,",
    "  SD1.5's scaled-linear schedule (0.00085–0.012, 1000 steps), 10% of captions dropped for CFG.",
    f"- Weights: {size_mb:.1f} MB of safetensors (budget 30 MB).",
    "",
    "## Recipe (2 cores, this machine)",
    "Wall time of the final invocation; parts finished by an earlier invocation of the same config were",
    "resumed, not retrained (~0 min). Whole-recipe times from the progress logs are in the README.",
    "",
    "| part | steps | wall time (min) | notes |",
    "|---|---|---|---|",
    f"| toy CLIP | {m['clip']['steps']} | {wall['clip']:.1f} | |",
    f"| attribute checker | {m['checker']['steps']} | {wall['checker']:.1f} | |",
    f"| VAE | {m['vae']['steps']} | {wall['vae']:.1f} | reconstruction PSNR {m['vae']['psnr_db']:.1f} dB on 512 val renders; "
    f"scaling factor 1/std = {1 / m['vae']['latent_std']:.4f} |",
    f"| UNet | {m['unet']['steps']} | {wall['unet']:.1f} | |",
    "",
    "## Evaluation models",
    f"- Attribute checker on 2000 fresh renders (toy-val prompts, seed 77): overall {acc(chk, 'overall'):.4f}; "
    + ", ".join(f"{k} {v:.4f}" for k, v in chk["overall"].items() if k != "all") + ".",
    f"- CLIP score on those renders: {matched:.2f} with their own captions vs {shuffled:.2f} with shuffled captions.",
    "",
    "## Guidance sweep (DDIM, 25 steps, 200 toy-val prompts, seed 1)",
    "| guidance | FID | CLIP score | attribute accuracy |",
    "|---|---|---|---|",
]
lines += [f"| {g} | {r['fid']:.2f} | {r['clip_score']:.2f} | {r['attribute_accuracy']:.3f} |" for g, r in sweep.items()]
a = ev["attributes"]
lines += [
    "",
    f"Chosen: guidance {TEACHER_GUIDANCE} (highest attribute accuracy at 25 steps, FID breaking ties; used for the 50-step numbers below).",
    "",
    f"## Teacher quality (DDIM, 50 steps, guidance {ev['guidance']}, {ev['n']} toy-val prompts, seed {ev['seed']})",
    "Reproduce: `pocketdiff eval --pipeline pocketdiff/toyworld/assets/pipeline --n 1000 --steps 50 "
    f"--guidance {ev['guidance']} --scheduler ddim --seed 0 --out docs/toy_teacher_eval.json`",
    "",
    "| | attribute accuracy | n | target |",
    "|---|---|---|---|",
    f"| single object, seen combinations | {acc(a, 'kind=single,split=val'):.3f} | {a.get('kind=single,split=val', {}).get('n', 0)} | ≥ 0.85 |",
    f"| two objects, seen combinations | {acc(a, 'kind=pair,split=val'):.3f} | {a.get('kind=pair,split=val', {}).get('n', 0)} | ≥ 0.60 |",
    f"| single object, held-out combinations | {acc(a, 'kind=single,split=heldout'):.3f} | {a.get('kind=single,split=heldout', {}).get('n', 0)} | reported |",
    f"| two objects, held-out combinations | {acc(a, 'kind=pair,split=heldout'):.3f} | {a.get('kind=pair,split=heldout', {}).get('n', 0)} | reported |",
    f"| all | {ev['attribute_accuracy']:.3f} | {ev['n']} | |",
    "",
    f"FID {ev['fid']:.2f}, CLIP score {ev['clip_score']:.2f}. Per attribute (all images): "
    + ", ".join(f"{k} {v:.3f}" for k, v in a["overall"].items() if k != "all") + ".",
    "",
    "**Two-object target missed.** Single objects meet the bar on seen and held-out combinations; two-object",
    f"prompts do not: the relation is right {a['kind=pair']['relation']:.0%} of the time, but both objects' colours are "
    f"right only {a['kind=pair']['colour']:.0%} and both shapes {a['kind=pair']['shape']:.0%} of the time: attributes get bound to the wrong object",
    "(e.g. \"a blue square left of a purple triangle\" gives a blue triangle left of a purple square). The text",
    "encoder is the toy CLIP's contrastive text tower, which, like CLIP in SD1.5, encodes prompts close to a bag of",
    "words; 30% pair captions and 8000 UNet steps did not overcome it. The checker reads rendered pairs at 100%, so",
    "the measurement is not the limit. Likely remedies (not tried here, time): more pair data and steps, a text",
    "encoder trained with hard negatives that swap attributes, or a larger UNet.",
    "",
    "## Baseline table (the reference every later stage must beat)",
    "Reproduce: `make baseline` (300 prompts here for time; the command's default is 500).",
    "",
    (root / "docs/toy_baseline.md").read_text() if (root / "docs/toy_baseline.md").is_file() else "(not run)",
]
(root / "docs/toy_teacher.md").write_text("\n".join(lines) + "\n")
print((root / "docs/toy_teacher.md").read_text())
