"""The efficient-UNet stage report for a toy run: docs/efficient_unet_toy.{md,json} and the evolution plot.

    make slim-toy      # the whole chain on the toy teacher, then this script

It reads the outputs of the chain (``--work``, default build/slim):
- ``robust/`` (slim-robust), ``evolved/`` + ``evolved.work/report.json`` (slim-evolve),
  ``finetuned/`` (slim-finetune);
and measures, on this machine:
- params and MACs of the teacher's and the slim UNet (batch 2, the pipeline's sample size);
- UNet latency on onnxruntime, teacher vs slim side by side in one process (``bench compare
  --components unet``), as a ratio;
- quality with the same sampler, steps, guidance, prompts and seeds for the teacher, the evolved slim
  UNet before its KD fine-tune, and after it: FID, CLIP score, attribute accuracy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from pocketdiff.benchmarks.compare import Side, compare
from pocketdiff.benchmarks.flops import count_flops
from pocketdiff.benchmarks.quality import EvalModels, evaluate_images, prompt_set
from pocketdiff.export.bundle import ExportConfig, write_bundle
from pocketdiff.generate import GenerateConfig, generate_many
from pocketdiff.pipedir import load_pipeline, read_json
from pocketdiff.toyworld import TEACHER_GUIDANCE, TOY_TEACHER_DIR


def unet_size(pipeline_dir: Path) -> dict:
    import torch

    unet = load_pipeline(pipeline_dir).unet.eval()
    c, s = unet.config.in_channels, unet.config.sample_size
    args = (torch.zeros(2, c, s, s), torch.tensor(500.0), torch.zeros(2, 77, unet.config.cross_attention_dim))
    f = count_flops(unet, args)
    return {"params": f.params, "macs_batch2": f.macs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(TOY_TEACHER_DIR / "pipeline"))
    p.add_argument("--eval-models", default=str(TOY_TEACHER_DIR), help="folder with clip/ and checker/")
    p.add_argument("--work", default="build/slim")
    p.add_argument("--n", type=int, default=1000, help="toy-val prompts for the quality table")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--out", default="docs/efficient_unet_toy")
    args = p.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    teacher, evolved, finetuned = Path(args.teacher), work / "evolved", work / "finetuned"
    evo = read_json(work / "evolved.work" / "report.json")
    record: dict = {"command": "make slim-toy", "evolution": {k: v for k, v in evo.items() if k != "config"},
                    "evolve_config": evo["config"]}

    # size
    record["size"] = {"teacher": unet_size(teacher), "slim": unet_size(finetuned)}

    # latency: onnxruntime, side by side in one process
    bundles = {}
    for name, src in (("teacher", teacher), ("slim", finetuned)):
        bundles[name] = work / f"bundle_{name}"
        write_bundle(src, bundles[name], ExportConfig(targets=("onnx",), guidance=TEACHER_GUIDANCE), overwrite=True)
    sides = [Side("bundle", bundles["teacher"], "onnx", args.steps, TEACHER_GUIDANCE),
             Side("bundle", bundles["slim"], "onnx", args.steps, TEACHER_GUIDANCE)]
    lat = compare(sides, threads=args.threads, repeat=args.repeat, components=("unet",))
    record["latency"] = {"backend": "onnxruntime", "threads": args.threads, "repeat": args.repeat,
                         "rows": [{"batch": r["batch"], "teacher_ms": r["A"]["median_ms"], "slim_ms": r["B"]["median_ms"],
                                   "ratio": r["ratio_vs_a"]["B"]} for r in lat["components"]],
                         "machine": lat["machine"]}

    # quality: the same sampler, steps, guidance, prompts and seeds
    models = EvalModels.load(args.eval_models)
    items = prompt_set("toy-val", args.n, 0)
    cfg = GenerateConfig(prompt="", steps=args.steps, guidance=TEACHER_GUIDANCE, seed=0, scheduler="ddim")
    quality = {}
    for name, src in tqdm([("teacher", teacher), ("slim before KD fine-tune", evolved), ("slim", finetuned)],
                          desc="quality"):
        images = generate_many([it.prompt for it in items], cfg, pipeline_dir=src)
        res = evaluate_images(models, items, images, seed=0)
        quality[name] = {k: res[k] for k in ("fid", "clip_score", "attribute_accuracy")}
    record["quality"] = {"n": args.n, "steps": args.steps, "guidance": TEACHER_GUIDANCE, "scheduler": "ddim",
                         "seed": 0, "rows": quality}

    shutil.copyfile(work / "evolved.work" / "evolution.png", out.parent / f"{out.name}_evolution.png")
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(record, out))
    print(out.with_suffix(".md").read_text())
    return 0


def render(r: dict, out: Path) -> str:
    e, q, lat, size = r["evolution"], r["quality"], r["latency"], r["size"]
    cfg = r["evolve_config"]
    t, s = q["rows"]["teacher"], q["rows"]["slim"]
    b2 = next(row for row in lat["rows"] if row["batch"] == 2)
    lines = [
        "# Efficient UNet on the toy teacher: stage report",
        "",
        f"Generated by `{r['command']}` (`scripts/efficient_unet_report.py`) from the chain's outputs. Machine: "
        f"{lat['machine']['cpu']}, {lat['threads']} threads.",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| slim UNet latency ≤ 0.6 × teacher (onnxruntime, batch 2, same run) | {b2['ratio']:.3f} | "
        f"{'yes' if b2['ratio'] <= 0.6 else 'no'} |",
        f"| attribute accuracy within 3 points of the teacher's (DDIM {q['steps']}) | {100 * s['attribute_accuracy']:.1f} "
        f"vs {100 * t['attribute_accuracy']:.1f} ({100 * (s['attribute_accuracy'] - t['attribute_accuracy']):+.1f}) | "
        f"{'yes' if t['attribute_accuracy'] - s['attribute_accuracy'] <= 0.03 else 'no'} |",
        f"| FID ≤ 1.1 × the teacher's | {s['fid']:.3f} vs {t['fid']:.3f} ({s['fid'] / t['fid']:.2f}×) | "
        f"{'yes' if s['fid'] <= 1.1 * t['fid'] else 'no'} |",
        "",
        "## Architecture",
        "",
        f"Evolution on the latency table `{cfg['target']}` (budget {cfg['budget']} × the full UNet, quality floor "
        f"{cfg['quality_floor']}, {cfg['finetune']['steps']} fine-tune steps between actions): "
        f"{e['finished']} after {len(e['iterations'])} iterations. Estimated latency {e['estimate_ratio']:.3f} × "
        f"the full UNet ({e['estimate_ms']:.3f} of {e['unet_ms']:.3f} ms).",
        "",
        f"- Removed ({len(e['removed_blocks'])}): " + ", ".join(f"`{b}`" for b in e["removed_blocks"]),
        f"- Kept ({len(e['kept_blocks'])}): " + ", ".join(f"`{b}`" for b in e["kept_blocks"]),
        f"- Restored during the search: {', '.join(e['restored_blocks']) or 'none'}",
        "",
        "| | params | MACs (batch 2) |",
        "|---|---|---|",
        f"| teacher UNet | {size['teacher']['params'] / 1e6:.3f} M | {size['teacher']['macs_batch2'] / 1e6:.1f} M |",
        f"| slim UNet | {size['slim']['params'] / 1e6:.3f} M ({size['slim']['params'] / size['teacher']['params']:.2f}×) | "
        f"{size['slim']['macs_batch2'] / 1e6:.1f} M ({size['slim']['macs_batch2'] / size['teacher']['macs_batch2']:.2f}×) |",
        "",
        f"![evolution]({out.name}_evolution.png)",
        "",
        "| iteration | action | block | Δproxy | Δlatency (ms) | proxy after fine-tune | estimate / full |",
        "|---|---|---|---|---|---|---|",
    ]
    for it in e["iterations"]:
        lines.append(f"| {it['iteration']} | {it['kind']} | `{it['block']}` | {it['d_quality']:.2e} | "
                     f"{it['d_latency_ms']:+.4f} | {it['proxy_after_finetune']:.4f} | {it['estimate_ratio']:.3f} |")
    lines += [
        "",
        f"## Latency (onnxruntime, {lat['threads']} threads, median of {lat['repeat']}, teacher and slim alternating)",
        "",
        "| batch | teacher UNet (ms) | slim UNet (ms) | slim / teacher |",
        "|---|---|---|---|",
        *[f"| {row['batch']} | {row['teacher_ms']:.3f} | {row['slim_ms']:.3f} | {row['ratio']:.3f} |"
          for row in lat["rows"]],
        "",
        f"## Quality (DDIM {q['steps']} steps, guidance {q['guidance']}, {q['n']} toy-val prompts, seed {q['seed']})",
        "",
        "| UNet | FID ↓ | CLIP score ↑ | attribute accuracy ↑ |",
        "|---|---|---|---|",
        *[f"| {name} | {row['fid']:.3f} | {row['clip_score']:.2f} | {row['attribute_accuracy']:.3f} |"
          for name, row in q["rows"].items()],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
