"""``create``, ``export``, ``generate`` and ``eval``: make a pipeline, export a bundle, draw and score images.

Steps, guidance and scheduler default to what the source pins (``pinned.pinned_defaults``): a bundle's
manifest, a distilled pipeline's trained steps; the export's flags come from ``ExportConfig``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pocketdiff.architectures.factory import ARCHITECTURES, build_pipeline, get_architecture
from pocketdiff.benchmarks.quality import check_real_eval_inputs, eval_grid, evaluate_source, write_report
from pocketdiff.cli.common import (Progress, add_config_args, add_trusted_key, check_suffix, config_from_args,
                                   note_verification, trusted_key)
from pocketdiff.export.bundle import TARGETS, ExportConfig, write_bundle
from pocketdiff.generate import (GenerateConfig, check_png_path, generate_runtime, generate_torch,
                                 runtime_from_onnx_folder, save_png)
from pocketdiff.pinned import pinned_defaults, trained_steps
from pocketdiff.pipedir import StageRecord, atomic_output_dir, write_history
from pocketdiff.runtime.policies import is_auto
from pocketdiff.runtime.sampler import RuntimePipeline
from pocketdiff.runtime.schedulers import SCHEDULERS
from pocketdiff.runtime.signing import keygen, load_private_key, public_key_hex
from pocketdiff.runtime.sessions import BACKENDS
from pocketdiff.toyworld import TOY_TEACHER_DIR


def _cmd_create(args) -> int:
    get_architecture(args.arch)
    with atomic_output_dir(args.out, overwrite=args.force) as tmp:
        pipe = build_pipeline(args.arch, seed=args.seed)
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        write_history(tmp, [StageRecord("create", {"arch": args.arch, "seed": args.seed})])
    print(f"wrote {args.arch} pipeline with random weights to {args.out}")
    return 0


def _cmd_export(args) -> int:
    steps = pinned_defaults(pipeline=args.pipeline).resolve(args.steps, None)[0]
    config = config_from_args(ExportConfig, args, steps=steps).validate()
    key = load_private_key(args.sign_key) if args.sign_key else None
    with Progress("exporting", "component", args.no_progress) as progress:
        out = write_bundle(args.pipeline, args.out, config, overwrite=args.force, progress=progress, sign_key=key)
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    for c in manifest["components"]:
        worst = min((r["psnr_db"] for runs in (c["parity"] or {}).values() for r in runs.values()), default=None)
        parity = f"parity PSNR >= {worst:.1f} dB" if worst is not None else c["meta"].get("parity", "no parity")
        quant = "+" + c["quantization"] if c["quantization"] else ""
        print(f"  {c['target']:<10} {c['role']:<12} {c['precision']}{quant}  {parity}")
    signed = f"signed by {public_key_hex(key.public_key())[:16]}..." if key else "unsigned"
    print(f"wrote bundle ({', '.join(config.targets)}) to {out}; sampler policy {manifest['sampler']['policy']}; "
          f"{signed}")
    return 0


def _cmd_keygen(args) -> int:
    private, public = keygen(args.out)
    print(f"wrote the private key {private} (keep it secret; export --sign-key {private}) and the public key "
          f"{public} (generate/eval/bench/regress --trusted-key {public})")
    return 0


def _source_defaults(args, fallback_steps: int) -> None:
    """--steps/--guidance/--scheduler from the source's pins where not given."""
    pinned = pinned_defaults(pipeline=args.pipeline, bundle=args.bundle)
    args.steps, args.guidance = pinned.resolve(args.steps, args.guidance, fallback_steps)
    if args.scheduler is None:
        args.scheduler = pinned.scheduler


def steps_arg(text: str):
    """``--steps``: a count, or ``auto[:PRESET|METRIC=VALUE,...]`` (a bundle's step-budget predictor)."""
    if is_auto(text):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer or auto[:PRESET|METRIC=VALUE,...], got {text!r}") from None


def _cmd_generate(args) -> int:
    _source_defaults(args, 25)
    cfg = GenerateConfig(prompt=args.prompt, steps=args.steps, guidance=args.guidance, seed=args.seed,
                         scheduler=args.scheduler, negative_prompt=args.negative_prompt,
                         truncate=args.truncate).validate()
    check_png_path(args.out)
    with Progress("denoising", "step", args.no_progress) as progress:
        if args.pipeline:
            trained = trained_steps(args.pipeline)
            if trained is not None and trained != cfg.steps and not is_auto(cfg.steps):
                print(f"warning: {args.pipeline} is a distill-steps student trained for {trained} steps; sampling it "
                      f"at {cfg.steps} steps leaves its training grid", file=sys.stderr)
            result = generate_torch(args.pipeline, cfg, callback=progress)
        elif args.bundle:
            runtime = RuntimePipeline.from_bundle(args.bundle, backend=args.backend, threads=args.threads,
                                                  trusted_key=trusted_key(args, args.bundle))
            result = generate_runtime(runtime, cfg, callback=progress)
        else:
            result = generate_runtime(runtime_from_onnx_folder(args.onnx, threads=args.threads), cfg,
                                      callback=progress)
    save_png(result.image, args.out)
    # what was verified, said once the image is written (a failed run prints only its error line)
    note_verification(args, args.bundle)
    if args.onnx:
        print(f"note: {args.onnx} is a bare ONNX folder: it carries no checksums or signature, so nothing in it "
              "is verified (a bundle's manifest is: use --bundle)", file=sys.stderr)
    timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.timings.items())
    counts = result.call_counts()
    calls = ", ".join(f"{role} x{n}" for role, n in counts.items()) if counts else "diffusers pipeline"
    chose = (f" chosen by the step-budget predictor for {result.budget['request']} "
             f"({', '.join(f'{m} {v:g}' for m, v in result.budget['targets'].items())})" if result.budget else "")
    print(f"wrote {args.out} ({result.steps} denoising steps{chose}; calls: {calls}; {timings})")
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "timings_s": result.timings, "steps": result.steps,
                          "budget": result.budget, "calls": counts, "trace": [c.to_dict() for c in result.trace]}))
    return 0


def _cmd_eval(args) -> int:
    check_suffix(args.out, ".json", "--out")
    _source_defaults(args, 50)
    cfg = GenerateConfig(prompt="", steps=args.steps, guidance=args.guidance, seed=args.seed,
                         scheduler=args.scheduler).validate()
    # the real-checkpoint protocol (COCO-30K style: captions, reference images, a local CLIP), checked first
    real = (check_real_eval_inputs(args.captions, args.reference_dir, args.clip_model, args.inception_weights, args.n)
            if args.captions else None)
    with Progress("generating", "img", args.no_progress) as progress:
        result, images = evaluate_source(cfg, args.prompts, args.n, args.eval_models, real, pipeline_dir=args.pipeline,
                                         onnx_dir=args.onnx, bundle_dir=args.bundle, callback=progress,
                                         trusted_key=trusted_key(args, args.bundle))
    write_report(result, args.out, eval_grid(images))
    note_verification(args, args.bundle)
    if real is not None:
        print(f"FID (Inception) {result['fid_inception']:.2f}  CLIP {result['clip_score']:.2f} -> {args.out}")
        return 0
    a = result["attributes"]
    print(f"FID {result['fid']:.2f}  CLIP {result['clip_score']:.2f}  attribute accuracy "
          f"{result['attribute_accuracy']:.3f} (held-out {a.get('split=heldout', {}).get('all', float('nan')):.3f}; "
          f"rephrased prompts {result['rephrased']['attribute_accuracy']:.3f}) over {result['n']} images -> {args.out}")
    if is_auto(cfg.steps):
        taken = result["steps_taken"]
        print(f"steps {cfg.steps}: mean {taken['mean']:.2f}; per step count: "
              + ", ".join(f"{k}: {v}" for k, v in taken["histogram"].items()))
    return 0


def _sources(p, torch_help: str, runtime: str) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pipeline", help=f"diffusers pipeline folder ({torch_help})")
    src.add_argument("--onnx", help="exported ONNX folder (torch-free runtime; a bare folder has no checksums)")
    src.add_argument("--bundle", help=f"app bundle ({runtime})")


def add_commands(sub) -> None:
    c = sub.add_parser("create", help="write a random-weight pipeline of a named architecture")
    c.add_argument("--arch", required=True, help=f"one of: {', '.join(ARCHITECTURES)}")
    c.add_argument("--out", required=True, help="output pipeline folder")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--force", action="store_true", help="replace an existing output folder")
    c.set_defaults(func=_cmd_create)

    e = sub.add_parser("export", help="export a pipeline's components as an app bundle (targets: "
                                      f"{', '.join(TARGETS)})")
    e.add_argument("--pipeline", required=True, help="diffusers pipeline folder")
    e.add_argument("--out", required=True, help="output bundle folder (must not exist unless --force)")
    add_config_args(e, ExportConfig, skip=("steps",))
    e.add_argument("--steps", type=int, default=None, help="default step count pinned in the manifest (default: "
                                                         "the steps a distill-steps student was trained for, else 25)")
    e.add_argument("--sign-key", default=None, help="an Ed25519 private key (pocketdiff keygen): also write "
                                                     "manifest.json.sig, its signature over the manifest's bytes")
    e.add_argument("--force", action="store_true", help="replace an existing output folder")
    e.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    e.set_defaults(func=_cmd_export)

    k = sub.add_parser("keygen", help="a new Ed25519 key pair for signing bundles: KEY (private) and KEY.pub")
    k.add_argument("--out", required=True, help="private key file to write (the public key goes to OUT.pub)")
    k.set_defaults(func=_cmd_keygen)

    g = sub.add_parser("generate", help="generate one image from a prompt")
    _sources(g, "torch path", "torch-free runtime; checksums verified first")
    g.add_argument("--backend", default="onnx", help=f"runtime backend for --bundle; allowed: {', '.join(BACKENDS)}")
    g.add_argument("prompt")
    g.add_argument("--steps", type=steps_arg, default=None, help="a count, or auto[:PRESET|METRIC=VALUE,...] for a "
                   "bundle's step-budget predictor (default: a bundle's pinned steps, a distill-steps student's "
                   "trained steps, else 25)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale; <= 1 disables CFG "
                   "(default: a bundle's pinned guidance, else 7.5)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--scheduler", default=None, help=f"one of: {', '.join(SCHEDULERS)} (default: the bundle's or "
                                                     "the pipeline's)")
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--truncate", action="store_true", help="cut prompts over 77 tokens instead of failing")
    g.add_argument("--out", default="out.png", help="output .png path")
    g.add_argument("--threads", type=int, default=None, help="runtime threads (default: all cores)")
    g.add_argument("--json", action="store_true", help="also print config, timings and the call trace as JSON")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_trusted_key(g)
    g.set_defaults(func=_cmd_generate)

    ev = sub.add_parser("eval", help="FID, CLIP score and attribute accuracy on a toy prompt set")
    _sources(ev, "torch path", "torch-free runtime on its ONNX models; checksums verified first")
    ev.add_argument("--prompts", default="toy-val", help="prompt set; allowed: toy-val")
    ev.add_argument("--steps", type=steps_arg, default=None, help="a count, or auto[:PRESET|METRIC=VALUE,...] (a "
                    "bundle's step-budget predictor) (default: a bundle's pinned steps, a distill-steps student's "
                    "trained steps, else 50)")
    ev.add_argument("--guidance", type=float, default=None, help="default: a bundle's pinned guidance, else 7.5")
    ev.add_argument("--scheduler", default=None, help="default: the bundle's or the pipeline's")
    ev.add_argument("--n", type=int, default=1000, help="number of prompts/images")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--eval-models", default=str(TOY_TEACHER_DIR),
                    help="folder with the toy clip/ and checker/ (default: the shipped ones)")
    ev.add_argument("--out", default="eval.json", help="output JSON (an image grid PNG is written beside it)")
    real = ev.add_argument_group("real checkpoints (COCO-30K protocol; replaces the toy prompt set)")
    real.add_argument("--captions", help="text file, one caption per line (first --n are used)")
    real.add_argument("--reference-dir", help="folder of reference images for FID")
    real.add_argument("--clip-model", help="local transformers CLIP folder for CLIP score")
    real.add_argument("--inception-weights", help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth")
    ev.add_argument("--no-progress", action="store_true")
    add_trusted_key(ev)
    ev.set_defaults(func=_cmd_eval)
