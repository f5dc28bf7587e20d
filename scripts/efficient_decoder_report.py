"""The efficient-decoder stage report for a toy run: docs/efficient_decoder_toy.{md,json}.

    make decoder-toy     # distill-decoder on the toy teacher, then this script

Measured on this machine, for each distilled pipeline given (``--student NAME=DIR``, e.g. the pruned
and the TAESD-style decoder) against the teacher:
- PSNR and SSIM of the student decoder vs the teacher decoder on held-out latents: teacher generations
  for prompts of the ``val`` split with a seed the training cache never used;
- FID, CLIP score and attribute accuracy of full generations (same prompts, seeds, sampler, steps)
  with the student decoder vs with the teacher's;
- decoder params, MACs, and latency on onnxruntime side by side in one process (``bench compare
  --components vae_decoder``), as a ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from pocketdiff.benchmarks.compare import Side, compare
from pocketdiff.benchmarks.flops import count_flops
from pocketdiff.benchmarks.quality import EvalModels, evaluate_images, prompt_set
from pocketdiff.distill.decoder import decode, generate_latents
from pocketdiff.export.bundle import ExportConfig, write_bundle
from pocketdiff.generate import GenerateConfig, generate_many, images_from_latents
from pocketdiff.pipedir import load_pipeline, read_history
from pocketdiff.toyworld import TEACHER_GUIDANCE, TOY_TEACHER_DIR


def fidelity(teacher_vae, student_vae, latents: torch.Tensor) -> dict:
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    psnr, ssim = PeakSignalNoiseRatio(data_range=1.0), StructuralSimilarityIndexMeasure(data_range=1.0)
    with torch.no_grad():
        for i in range(0, len(latents), 64):
            z = latents[i:i + 64]
            t = ((decode(teacher_vae, z) + 1) / 2).clamp(0, 1)  # the images a pipeline would show
            s = ((decode(student_vae, z) + 1) / 2).clamp(0, 1)
            psnr.update(s, t)
            ssim.update(s, t)
    return {"psnr_db": float(psnr.compute()), "ssim": float(ssim.compute())}


def decoder_size(vae, latent_shape) -> dict:
    z = torch.zeros(1, *latent_shape)
    f = count_flops(vae.decoder, (z,))
    return {"params": sum(p.numel() for p in vae.decoder.parameters()), "macs": f.macs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(TOY_TEACHER_DIR / "pipeline"))
    p.add_argument("--eval-models", default=str(TOY_TEACHER_DIR))
    p.add_argument("--student", action="append", required=True, help="NAME=PIPELINE_DIR (repeatable)")
    p.add_argument("--work", default="build/decoder")
    p.add_argument("--n-heldout", type=int, default=500, help="held-out latents for PSNR/SSIM")
    p.add_argument("--n", type=int, default=1000, help="toy-val prompts for FID / accuracy")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--command", default="make decoder-toy")
    p.add_argument("--out", default="docs/efficient_decoder_toy")
    args = p.parse_args(argv)
    students = dict(s.split("=", 1) for s in args.student)
    work, out = Path(args.work), Path(args.out)
    teacher = load_pipeline(args.teacher)
    latent_shape = (teacher.unet.config.in_channels,) + (teacher.unet.config.sample_size,) * 2
    from pocketdiff.toyworld.world import batch

    prompts = [s.caption for s in batch(777, args.n_heldout, "val")]
    heldout = generate_latents(teacher, prompts, 25, TEACHER_GUIDANCE, seed=777)
    record = {"command": args.command, "heldout": {"n": args.n_heldout, "split": "val", "seed": 777, "steps": 25,
                                                   "guidance": TEACHER_GUIDANCE},
              "teacher": {"size": decoder_size(teacher.vae, latent_shape)}, "students": {}}
    for name, d in students.items():
        vae = load_pipeline(d).vae.eval()
        stage = read_history(d)[-1]
        record["students"][name] = {"pipeline": d, "kind": stage.config["kind"], "config": stage.config,
                                    "size": decoder_size(vae, latent_shape),
                                    "fidelity": fidelity(teacher.vae, vae, heldout)}

    # latency: onnxruntime, teacher and every student alternating in one process
    bundles = {"teacher": work / "bundle_teacher"}
    write_bundle(args.teacher, bundles["teacher"], ExportConfig(targets=("onnx",), guidance=TEACHER_GUIDANCE),
                 overwrite=True)
    for name, d in students.items():
        bundles[name] = work / f"bundle_{name}"
        write_bundle(d, bundles[name], ExportConfig(targets=("onnx",), guidance=TEACHER_GUIDANCE), overwrite=True)
    sides = [Side("bundle", b, "onnx", args.steps, TEACHER_GUIDANCE) for b in bundles.values()]
    lat = compare(sides, threads=args.threads, repeat=args.repeat, components=("vae_decoder",))
    row = lat["components"][0]
    letters = dict(zip(bundles, "ABCDEFG"))
    record["latency"] = {"backend": "onnxruntime", "threads": args.threads, "repeat": args.repeat,
                         "machine": lat["machine"], "teacher_ms": row["A"]["median_ms"],
                         **{n: {"ms": row[letters[n]]["median_ms"], "ratio": row["ratio_vs_a"][letters[n]]}
                            for n in students}}

    # quality of full generations: the same prompts, seeds, sampler and steps
    models = EvalModels.load(args.eval_models)
    items = prompt_set("toy-val", args.n, 0)
    cfg = GenerateConfig(prompt="", steps=args.steps, guidance=TEACHER_GUIDANCE, seed=0, scheduler="ddim")
    # distill-decoder keeps the teacher's text encoder and UNet, so one run of the sampler serves every
    # decoder: the same final latents, decoded by each (decoding them reproduces generate_many's images)
    latents = generate_many([it.prompt for it in items], cfg, pipeline_dir=args.teacher, output="latent")
    quality = {}
    for name, d in tqdm([("teacher", args.teacher), *students.items()], desc="quality"):
        vae = teacher.vae if name == "teacher" else load_pipeline(d).vae.eval()
        res = evaluate_images(models, items, images_from_latents(vae, latents), seed=0)
        quality[name] = {k: res[k] for k in ("fid", "clip_score", "attribute_accuracy")}
    record["quality"] = {"n": args.n, "steps": args.steps, "guidance": TEACHER_GUIDANCE, "scheduler": "ddim",
                         "seed": 0, "rows": quality}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(record))
    print(out.with_suffix(".md").read_text())
    return 0


def render(r: dict) -> str:
    q, lat, t = r["quality"], r["latency"], r["teacher"]
    tq = q["rows"]["teacher"]
    lines = ["# Efficient image decoder on the toy teacher: stage report", "",
             f"Generated by `{r['command']}` (`scripts/efficient_decoder_report.py`). Machine: {lat['machine']['cpu']}, "
             f"{lat['threads']} threads.", "", "## Targets", "",
             "| decoder | PSNR vs teacher ≥ 30 dB | FID within 5% | attribute accuracy within 1 point | latency ≤ 0.3× (onnxruntime) |",
             "|---|---|---|---|---|"]
    for name, s in r["students"].items():
        sq, f, la = q["rows"][name], s["fidelity"], lat[name]
        ok = lambda c: "met" if c else "**missed**"  # noqa: E731
        lines.append(
            f"| {name} | {f['psnr_db']:.2f} dB: {ok(f['psnr_db'] >= 30)} | {sq['fid']:.3f} vs {tq['fid']:.3f} "
            f"({100 * (sq['fid'] / tq['fid'] - 1):+.1f}%): {ok(sq['fid'] <= 1.05 * tq['fid'])} | "
            f"{100 * sq['attribute_accuracy']:.1f} vs {100 * tq['attribute_accuracy']:.1f}: "
            f"{ok(tq['attribute_accuracy'] - sq['attribute_accuracy'] <= 0.01)} | {la['ratio']:.3f}: {ok(la['ratio'] <= 0.3)} |")
    lines += ["", "## Training settings", "", "| decoder | architecture | training latents (generated + encoded) | "
              "steps × batch | lr (schedule) | loss weights l1 / l2 / perceptual |", "|---|---|---|---|---|---|"]
    for name, s in r["students"].items():
        c = s["config"]
        arch = (f"pruned AutoencoderKL decoder, width {c['width']}" if s["kind"] == "pruned" else
                f"TAESD-style, {c['tiny_channels']} ch × {c.get('tiny_blocks', 3)} blocks per stage")
        lines.append(f"| {name} | {arch} | {c['n_generated']} + {c['n_encoded']} | {c['steps']} × {c['batch_size']} | "
                     f"{c['lr']:g} "
                     f"({c.get('lr_schedule', 'constant')}) | {c['w_l1']:g} / {c['w_l2']:g} / {c['w_perceptual']:g} "
                     f"({c['perceptual']}) |")
    lines += ["", f"## Fidelity on held-out latents ({r['heldout']['n']} teacher generations, `val` prompts, seed "
              f"{r['heldout']['seed']}, never in the training cache)", "",
              "| decoder | kind | PSNR (dB) | SSIM | params | MACs (1 image) | ORT latency (ms) | / teacher |",
              "|---|---|---|---|---|---|---|---|",
              f"| teacher | AutoencoderKL | - | - | {t['size']['params'] / 1e6:.3f} M | {t['size']['macs'] / 1e6:.1f} M | "
              f"{lat['teacher_ms']:.3f} | 1.000 |"]
    for name, s in r["students"].items():
        lines.append(f"| {name} | {s['kind']} | {s['fidelity']['psnr_db']:.2f} | {s['fidelity']['ssim']:.4f} | "
                     f"{s['size']['params'] / 1e6:.3f} M | {s['size']['macs'] / 1e6:.1f} M | {lat[name]['ms']:.3f} | "
                     f"{lat[name]['ratio']:.3f} |")
    lines += ["", f"## Full generations (DDIM {q['steps']} steps, guidance {q['guidance']}, {q['n']} toy-val prompts, "
              f"seed {q['seed']}; one sampler run, its final latents decoded by each decoder)", "", "| decoder | FID ↓ | CLIP score ↑ | attribute accuracy ↑ |", "|---|---|---|---|"]
    lines += [f"| {n} | {row['fid']:.3f} | {row['clip_score']:.2f} | {row['attribute_accuracy']:.3f} |"
              for n, row in q["rows"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
