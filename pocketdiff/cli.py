"""The ``pocketdiff`` command: one subcommand per stage, plus create / export / generate.

Library code never sees argparse objects: each handler turns its arguments into typed values or a
config dataclass and calls the library. A :class:`PocketdiffError` becomes a one-line
``error: ...`` on stderr and exit status 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pocketdiff.errors import PocketdiffError
from pocketdiff.toyworld import TEACHER_GUIDANCE, TOY_TEACHER_DIR

log = logging.getLogger("pocketdiff")



class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


class _Progress:
    """A tqdm bar driven by the library's ``callback(done, total)`` progress protocol."""

    def __init__(self, desc: str, unit: str, disable: bool):
        from tqdm import tqdm

        self.bar = tqdm(desc=desc, unit=unit, disable=disable, file=sys.stderr)

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _cmd_create(args) -> int:
    from pocketdiff.architectures.factory import build_pipeline, get_architecture
    from pocketdiff.pipedir import StageRecord, atomic_output_dir, write_history

    get_architecture(args.arch)
    with atomic_output_dir(args.out, overwrite=args.force) as tmp:
        pipe = build_pipeline(args.arch, seed=args.seed)
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        write_history(tmp, [StageRecord("create", {"arch": args.arch, "seed": args.seed})])
    print(f"wrote {args.arch} pipeline with random weights to {args.out}")
    return 0


def _cmd_export(args) -> int:
    from pocketdiff.distill.steps import student_steps
    from pocketdiff.export.bundle import ExportConfig, write_bundle

    steps = args.steps if args.steps is not None else (student_steps(args.pipeline) or 25)
    config = ExportConfig(targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()),
                          precision=args.precision, quantize=args.quantize, steps=steps,
                          guidance=args.guidance, scheduler=args.scheduler).validate()
    with _Progress("exporting", "component", args.no_progress) as progress:
        out = write_bundle(args.pipeline, args.out, config, overwrite=args.force, progress=progress)
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    for c in manifest["components"]:
        worst = min((r["psnr_db"] for runs in (c["parity"] or {}).values() for r in runs.values()), default=None)
        parity = f"parity PSNR >= {worst:.1f} dB" if worst is not None else c["meta"].get("parity", "no parity")
        print(f"  {c['target']:<10} {c['role']:<12} {c['precision']}{'+' + c['quantization'] if c['quantization'] else ''}"
              f"  {parity}")
    print(f"wrote bundle ({', '.join(config.targets)}) to {out}")
    return 0


def _check_bench_args(args) -> None:
    if args.json and not str(args.json).endswith(".json"):
        raise PocketdiffError(f"--json must be a .json file, got {args.json}")
    if getattr(args, "html", None) and not str(args.html).endswith(".html"):
        raise PocketdiffError(f"--html must be a .html file, got {args.html}")
    for name in ("threads", "repeat"):
        if getattr(args, name) < 1:
            raise PocketdiffError(f"--{name} must be >= 1, got {getattr(args, name)}")


def _write_json(path: str | None, result: dict) -> None:
    if path:
        from pocketdiff.pipedir import atomic_output_file

        with atomic_output_file(path) as tmp:
            tmp.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")


def _cmd_bench(args) -> int:
    from pocketdiff.benchmarks.components import BACKENDS, bench_components
    from pocketdiff.errors import choice_error

    if not (args.pipeline or args.bundle or args.arch):
        raise PocketdiffError("bench needs --pipeline DIR, --bundle DIR or --arch NAME (or: bench compare A B)")
    if args.backend not in BACKENDS:
        raise choice_error("backend", args.backend, BACKENDS)
    if args.resolution is not None and not args.arch:
        raise PocketdiffError("--resolution applies to --arch (an exported bundle has fixed shapes)")
    if args.unet_spec and not args.arch:
        raise PocketdiffError("--unet-spec applies to --arch (a pipeline or bundle already has its UNet)")
    _check_bench_args(args)
    if args.target not in ("local", "adb"):
        raise choice_error("bench target", args.target, ("local", "adb"))
    if args.target == "adb" and args.backend != "executorch":
        raise PocketdiffError("--target adb runs ExecuTorch programs: pass --backend executorch")
    if args.target == "local" and (args.runner or args.serial):
        raise PocketdiffError("--runner and --serial apply to --target adb")
    source, pipeline_dir = args.pipeline or args.bundle, None
    if args.arch:
        from pocketdiff.benchmarks.components import arch_sources

        source, pipeline_dir = arch_sources(args.arch, args.backend, args.resolution, unet_spec=args.unet_spec)
    elif args.backend == "torch" and not args.pipeline:
        raise PocketdiffError("--backend torch benchmarks a pipeline folder: pass --pipeline")
    elif args.backend != "torch" and not args.bundle:
        raise PocketdiffError(f"--backend {args.backend} benchmarks an exported bundle: pass --bundle")
    if args.target == "adb":
        return _bench_adb(args, source)
    with _Progress("benchmarking", "case", args.no_progress) as progress:
        result = bench_components(source, args.backend, args.threads, args.warmup, args.repeat,
                                  args.peak_gflops, progress, pipeline_dir)
    print(f"{'component':<13}{'batch':>5}{'median ms':>11}{'min':>9}{'max':>9}{'cold s':>8}{'peak RSS MB':>12}"
          f"{'GMACs':>9}{'GFLOP/s':>9}{'of peak':>9}")
    for r in result["components"]:
        macs = f"{r['flops']['macs'] / 1e9:.3f}" if r["flops"] else "-"  # FLOPs need the torch modules
        rate = f"{r['gflops_per_s']:.1f}" if "gflops_per_s" in r else "-"
        share = f"{r['fraction_of_peak']:.1%}" if "fraction_of_peak" in r else "-"
        print(f"{r['component']:<13}{r['batch']:>5}{r['median_ms']:>11.2f}{r['min_ms']:>9.2f}{r['max_ms']:>9.2f}"
              f"{r['cold_start_s']:>8.2f}{r['peak_rss_mb']:>12.0f}{macs:>9}{rate:>9}{share:>9}")
    print(f"peak: {result['peak']['peak_gflops']} GFLOP/s ({result['peak']['how']}); machine: {result['machine']['cpu']}")
    _write_json(args.json, result)
    if args.html:
        from pocketdiff.benchmarks.report import write_bench_report

        print(f"wrote {write_bench_report(args.html, bench_results=[result])}")
    return 0


def _bench_adb(args, source) -> int:
    from pocketdiff.benchmarks.adb import AdbTarget, bench_adb

    if not args.runner:
        raise PocketdiffError("--target adb needs --runner PATH (executor_runner built for the phone)")
    target = AdbTarget(Path(args.runner), args.serial, args.adb)
    with _Progress("on device", "component", args.no_progress) as progress:
        result = bench_adb(source, target, args.threads, args.warmup, args.repeat, progress)
    print(f"device: {result['device'].get('ro.product.manufacturer', '')} {result['device'].get('ro.product.model', '')}")
    print(f"{'component':<13}{'batch':>5}{'median ms':>11}{'min':>9}{'max':>9}{'load ms':>9}")
    for r in result["components"]:
        med = r.get("median_ms", r.get("mean_ms"))
        print(f"{r['component']:<13}{r['batch']:>5}{med:>11.2f}{r.get('min_ms', med):>9.2f}{r.get('max_ms', med):>9.2f}"
              f"{r['load_ms'] or float('nan'):>9.1f}")
    _write_json(args.json, result)
    return 0


def _cmd_bench_blocks(args) -> int:
    from pocketdiff.benchmarks.blocks import BLOCK_BACKENDS, measure_block_latency, target_key, write_latency_table
    from pocketdiff.benchmarks.latency import machine_info
    from pocketdiff.errors import choice_error

    if args.backend not in BLOCK_BACKENDS:
        raise choice_error("per-block latency backend", args.backend, BLOCK_BACKENDS)
    if not str(args.out).endswith(".json"):
        raise PocketdiffError(f"--out must be a .json file, got {args.out}")
    for name in ("threads", "repeat", "batch"):
        if getattr(args, name) < 1:
            raise PocketdiffError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if bool(args.pipeline) == bool(args.arch):
        raise PocketdiffError("bench blocks needs exactly one of --pipeline DIR or --arch NAME")
    if args.pipeline:
        from pocketdiff.pipedir import load_pipeline

        unet = load_pipeline(args.pipeline).unet
    else:
        from pocketdiff.architectures.factory import build_pipeline, load_unet_spec

        overrides = load_unet_spec(args.unet_spec) if args.unet_spec else None
        unet = build_pipeline(args.arch, seed=0, resolution=args.resolution, unet_overrides=overrides).unet
    key = args.target_key or target_key(args.backend, args.threads)
    with _Progress("timing blocks", "block", args.no_progress) as progress:
        table = measure_block_latency(unet, args.batch, args.backend, args.threads, args.warmup, args.repeat,
                                      progress)
    path = write_latency_table(args.out, key, table, machine_info(args.threads))
    total = sum(b["median_ms"] for b in table["blocks"].values())
    print(f"{len(table['blocks'])} blocks, {total:.2f} ms summed; whole UNet {table['unet']['median_ms']:.2f} ms, "
          f"per-call overhead {table['call_overhead_ms']:.3f} ms; wrote table {key!r} to {path}")
    return 0


def _cmd_bench_report(args) -> int:
    from pocketdiff.benchmarks.report import read_bench_results, write_bench_report

    if not str(args.out).endswith(".html"):
        raise PocketdiffError(f"--out must be a .html file, got {args.out}")
    benches, comparison = read_bench_results(args.results)
    print(f"wrote {write_bench_report(args.out, benches, comparison, title=args.title)}")
    return 0


def _cmd_bench_compare(args) -> int:
    from pocketdiff.benchmarks.compare import compare, parse_side, side_names

    _check_bench_args(args)
    names = side_names(len(args.sides))
    sides = [parse_side(text) for text in args.sides]
    with _Progress("comparing", "component", args.no_progress) as progress:
        result = compare(sides, args.threads, args.warmup, args.repeat, progress, pairwise=args.pairwise,
                         components=tuple(args.components.split(",")) if args.components else None)
    for n, s in zip(names, sides):
        print(f"{n} = {s.label}")
    print(f"{'component':<13}{'batch':>5}" + "".join(f"{n + ' ms':>11}" for n in names)
          + "".join(f"{n + '/A':>8}" for n in names[1:]))
    for r in result["components"]:
        cells = "".join(f"{r[n]['median_ms']:>11.2f}" if n in r else f"{'-':>11}" for n in names)
        ratios = "".join(f"{r.get('ratio_vs_a', {}).get(n, float('nan')):>8.3f}" for n in names[1:])
        print(f"{r['component']:<13}{r['batch']:>5}{cells}{ratios}")
    e = result["end_to_end"]
    for n in names:
        if "e2e_ms" in e[n]:
            print(f"end to end {n}: {e[n]['e2e_ms']:.1f} ms (text + {e[n]['steps']} x UNet step + decoder)")
    for n, x in e.get("speedup_vs_a", {}).items():
        print(f"{n} is {x:.2f}x faster than A end to end")
    _write_json(args.json, result)
    if args.html:
        from pocketdiff.benchmarks.report import write_bench_report

        print(f"wrote {write_bench_report(args.html, compare_result=result)}")
    return 0


def _generation_defaults(args, steps_default: int = 25) -> tuple[int, float]:
    """--steps/--guidance, or the source's own: a bundle's pinned defaults, a student's trained steps."""
    steps, guidance = args.steps, args.guidance
    if args.bundle and (steps is None or guidance is None):
        from pocketdiff.runtime.bundle import load_bundle

        pinned = load_bundle(args.bundle, verify=False).manifest["defaults"]
        steps = pinned["steps"] if steps is None else steps
        guidance = pinned["guidance"] if guidance is None else guidance
    if args.pipeline and steps is None:
        from pocketdiff.distill.steps import student_steps

        steps = student_steps(args.pipeline)
    return (steps_default if steps is None else steps), (7.5 if guidance is None else guidance)


def _cmd_generate(args) -> int:
    from pocketdiff.generate import GenerateConfig, check_png_path, generate_runtime, generate_torch, save_png

    args.steps, args.guidance = _generation_defaults(args)
    cfg = GenerateConfig(prompt=args.prompt, steps=args.steps, guidance=args.guidance, seed=args.seed,
                         scheduler=args.scheduler, negative_prompt=args.negative_prompt,
                         truncate=args.truncate).validate()
    check_png_path(args.out)
    with _Progress("denoising", "step", args.no_progress) as progress:
        if args.pipeline:
            from pocketdiff.distill.steps import student_steps

            trained = student_steps(args.pipeline)
            if trained is not None and trained != cfg.steps:
                print(f"warning: {args.pipeline} is a distill-steps student trained for {trained} steps; sampling it "
                      f"at {cfg.steps} steps leaves its training grid", file=sys.stderr)
            result = generate_torch(args.pipeline, cfg, callback=progress)
        elif args.bundle:
            from pocketdiff.runtime.sampler import RuntimePipeline

            runtime = RuntimePipeline.from_bundle(args.bundle, backend=args.backend, threads=args.threads)
            result = generate_runtime(runtime, cfg, callback=progress)
        else:
            result = generate_runtime(args.onnx, cfg, callback=progress, threads=args.threads)
    save_png(result.image, args.out)
    timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.timings.items())
    print(f"wrote {args.out} ({result.unet_calls} denoising steps; {timings})")
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "timings_s": result.timings, "unet_calls": result.unet_calls}))
    return 0


def _cmd_eval(args) -> int:
    from pocketdiff.benchmarks.quality import check_real_eval_inputs, eval_grid, evaluate_source, write_report
    from pocketdiff.generate import GenerateConfig

    if not str(args.out).endswith(".json"):
        raise PocketdiffError(f"--out must be a .json file, got {args.out}")
    args.steps, args.guidance = _generation_defaults(args, steps_default=50)
    cfg = GenerateConfig(prompt="", steps=args.steps, guidance=args.guidance, seed=args.seed,
                         scheduler=args.scheduler).validate()
    # the real-checkpoint protocol (COCO-30K style: captions, reference images, a local CLIP), checked first
    real = (check_real_eval_inputs(args.captions, args.reference_dir, args.clip_model, args.inception_weights, args.n)
            if args.captions else None)
    with _Progress("generating", "img", args.no_progress) as progress:
        result, images = evaluate_source(cfg, args.prompts, args.n, args.eval_models, real, pipeline_dir=args.pipeline,
                                         onnx_dir=args.onnx, bundle_dir=args.bundle, callback=progress)
    write_report(result, args.out, eval_grid(images))
    if real is not None:
        print(f"FID (Inception) {result['fid_inception']:.2f}  CLIP {result['clip_score']:.2f} -> {args.out}")
        return 0
    a = result["attributes"]
    print(f"FID {result['fid']:.2f}  CLIP {result['clip_score']:.2f}  attribute accuracy "
          f"{result['attribute_accuracy']:.3f} (held-out {a.get('split=heldout', {}).get('all', float('nan')):.3f}) "
          f"over {result['n']} images -> {args.out}")
    return 0


def _kd_config(args, **defaults):
    from pocketdiff.distill.kd import KDTrainConfig

    return KDTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, skip_prob=args.skip_prob,
                         w_denoise=args.w_denoise, w_out_kd=args.w_out_kd, w_feat_kd=args.w_feat_kd, data=args.data,
                         **defaults).validate()


def _cmd_slim_robust(args) -> int:
    from pocketdiff.distill.robust_training import robust_train

    cfg = _kd_config(args)
    workdir = Path(args.workdir or f"{args.out}.work")
    out = robust_train(args.pipeline, args.out, cfg, workdir, progress=not args.no_progress, overwrite=args.force)
    print(f"wrote the robust-trained pipeline to {out}; checkpoints and loss log in {workdir}")
    return 0


def _cmd_slim_evolve(args) -> int:
    from pocketdiff.distill.evolution import EvolveConfig, evolve

    cfg = EvolveConfig(latency_table=args.latency_table, target=args.target, budget=args.budget,
                       quality_floor=args.quality_floor, max_iterations=args.max_iterations,
                       probe_size=args.probe_size, finetune=_kd_config(args, checkpoint_every=max(args.steps // 2, 1)))
    cfg.validate()
    workdir = Path(args.workdir or f"{args.out}.work")
    out = evolve(args.pipeline, args.out, cfg, workdir, progress=not args.no_progress, overwrite=args.force)
    from pocketdiff.pipedir import read_json

    rep = read_json(workdir / "report.json")
    print(f"{rep['finished']}: removed {len(rep['removed_blocks'])} blocks, estimated latency "
          f"{rep['estimate_ratio']:.3f} x the full UNet (budget {cfg.budget}), proxy {rep['proxy']:.4f}; "
          f"params {rep['params_slim'] / 1e6:.2f} M of {rep['params_full'] / 1e6:.2f} M")
    print(f"wrote the slim pipeline to {out}; report and plot: {workdir}/report.json, {workdir}/evolution.png")
    return 0


def _cmd_slim_finetune(args) -> int:
    from pocketdiff.distill.slim_finetune import slim_finetune

    cfg = _kd_config(args)
    workdir = Path(args.workdir or f"{args.out}.work")
    out = slim_finetune(args.pipeline, args.teacher, args.out, cfg, workdir, progress=not args.no_progress,
                        overwrite=args.force)
    print(f"wrote the fine-tuned slim pipeline to {out}; checkpoints and loss log in {workdir}")
    return 0


def _cmd_build(args) -> int:
    from pocketdiff.build import build, load_recipe

    recipe = load_recipe(args.recipe, args.set or [])
    res = build(args.teacher, recipe, args.out, from_stage=args.from_stage, until=args.until,
                progress=not args.no_progress)
    from pocketdiff.distributed import is_main_process

    if not is_main_process():  # (accelerate launch: the other processes stop after the training stages)
        return 0
    for name, what in res["stages"].items():
        print(f"  {name:<8} {what}")
    report = Path(args.out) / "report" / "index.html"
    print(f"build in {args.out}" + (f"; report: {report}" if report.is_file() else ""))
    return 0


def _cmd_regress(args) -> int:
    from pocketdiff.benchmarks.regress import regress, table

    passed, checks, _ = regress(args.bundle, args.baseline, args.eval_models, args.json)
    print(table(checks))
    print("quality gate: " + ("passed" if passed else f"FAILED ({sum(not c.ok for c in checks)} regressed)"))
    return 0 if passed else 1


def _cmd_distill_steps(args) -> int:
    from pocketdiff.distill.steps import StepDistillConfig, distill_steps, plan

    cfg = StepDistillConfig(start_steps=args.start_steps, rounds=args.rounds, iters=args.iters,
                            v_warmup_iters=args.v_warmup_iters, batch_size=args.batch_size, lr=args.lr,
                            lr_schedule=args.lr_schedule, ema_decay=args.ema_decay, cfg_prob=args.cfg_prob,
                            w_min=args.w_min, w_max=args.w_max,
                            guidance_embed=args.guidance_embed, embed_dim=args.embed_dim,
                            caption_dropout=args.caption_dropout, data=args.data).validate()
    workdir = Path(args.workdir or f"{args.out}.work")
    out = distill_steps(args.pipeline, args.out, cfg, workdir, teacher_dir=args.teacher, progress=not args.no_progress,
                        overwrite=args.force)
    last = plan(cfg)[-1].steps
    print(f"wrote the {last}-step student pipeline to {out} (sample it with DDIM at {last} steps); every round's "
          f"student, checkpoints and loss logs in {workdir}")
    return 0


def _cmd_distill_decoder(args) -> int:
    from pocketdiff.distill.decoder import DecoderDistillConfig, distill_decoder

    cfg = DecoderDistillConfig(kind=args.kind, width=args.width, tiny_channels=args.tiny_channels,
                               tiny_blocks=args.tiny_blocks, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               lr_schedule=args.lr_schedule, w_l1=args.w_l1, w_l2=args.w_l2,
                               w_perceptual=args.w_perceptual, perceptual=args.perceptual,
                               perceptual_model=args.perceptual_model or "", n_generated=args.n_generated,
                               gen_steps=args.gen_steps, guidance=args.guidance, n_encoded=args.n_encoded,
                               latent_jitter=args.latent_jitter, jitter_scale=args.jitter_scale,
                               data=args.data).validate()
    workdir = Path(args.workdir or f"{args.out}.work")
    out = distill_decoder(args.pipeline, args.out, cfg, workdir, progress=not args.no_progress, overwrite=args.force,
                          cache_dir=args.latent_cache)
    print(f"wrote the pipeline with the distilled {cfg.kind} decoder to {out}; latent cache, checkpoints and loss "
          f"log in {workdir}")
    return 0


def _cmd_toy_train_teacher(args) -> int:
    from pocketdiff.toyworld.teacher import TeacherRecipe, train_teacher

    recipe = TeacherRecipe.quick() if args.quick else TeacherRecipe()
    out = train_teacher(args.out, recipe, progress=not args.no_progress)
    print(f"wrote the toy teacher to {out}/pipeline (eval models: {out}/clip, {out}/checker); "
          f"work dirs (checkpoints, loss logs) in {out}.work/")
    return 0


def _cmd_toy_baseline(args) -> int:
    import json


    from pocketdiff.benchmarks.quality import EvalModels, baseline_table, markdown_table
    from pocketdiff.pipedir import atomic_output_file

    models = EvalModels.load(args.teacher)
    with _Progress("baseline", "config", args.no_progress) as progress:
        rows = baseline_table(Path(args.teacher) / "pipeline", models, args.n, args.guidance, args.seed,
                              callback=progress)
    out = Path(args.out)
    with atomic_output_file(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(rows, indent=2) + "\n")
    with atomic_output_file(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown_table(rows))
    print(markdown_table(rows))
    return 0


def _cmd_toy_demo(args) -> int:
    from pocketdiff.toyworld.demo import run_demo

    page = run_demo(args.teacher, args.out, guidance=args.guidance, steps=args.steps, n_eval=args.n)
    print(f"demo report: {page}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pocketdiff.architectures.factory import ARCHITECTURES
    from pocketdiff.export.bundle import PRECISIONS, TARGETS
    from pocketdiff.runtime.backends import BACKENDS
    from pocketdiff.runtime.schedulers import SCHEDULERS

    p = _Parser(prog="pocketdiff", description="Make a Stable Diffusion 1.x checkpoint phone-ready.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("create", help="write a random-weight pipeline of a named architecture")
    c.add_argument("--arch", required=True, help=f"one of: {', '.join(ARCHITECTURES)}")
    c.add_argument("--out", required=True, help="output pipeline folder")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--force", action="store_true", help="replace an existing output folder")
    c.set_defaults(func=_cmd_create)

    e = sub.add_parser("export", help="export a pipeline's text encoder, UNet and VAE decoder as an app bundle")
    e.add_argument("--pipeline", required=True, help="diffusers pipeline folder")
    e.add_argument("--out", required=True, help="output bundle folder (must not exist unless --force)")
    e.add_argument("--targets", default="onnx", help=f"comma-separated; allowed: {', '.join(TARGETS)}")
    e.add_argument("--precision", default="fp32", help=f"compute precision; allowed: {', '.join(PRECISIONS)}")
    e.add_argument("--quantize", default=None,
                   help="weight quantisation: " + "; ".join(f"{t.name}: {', '.join(t.quantizations) or 'none'}"
                                                           for t in TARGETS.values()))
    e.add_argument("--steps", type=int, default=None, help="default step count pinned in the manifest (default: "
                                                         "the steps a distill-steps student was trained for, else 25)")
    e.add_argument("--guidance", type=float, default=7.5,
                   help="default guidance; > 1 (CFG) gives fixed-batch targets a batch-2 UNet")
    e.add_argument("--scheduler", default=None, help=f"one of: {', '.join(SCHEDULERS)} (default: the pipeline's)")
    e.add_argument("--force", action="store_true", help="replace an existing output folder")
    e.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    e.set_defaults(func=_cmd_export)

    b = sub.add_parser("bench", help="per-component latency, cold start, peak RSS, FLOPs (each in its own process)")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--pipeline", help="diffusers pipeline folder (backend torch)")
    src.add_argument("--bundle", help="app bundle (backend onnx or executorch)")
    src.add_argument("--arch", help=f"named architecture with random weights, built (and exported) once under "
                                    f"build/bench; one of: {', '.join(ARCHITECTURES)}")
    b.add_argument("--resolution", type=int, default=None, help="image size for --arch (default: its native size)")
    b.add_argument("--unet-spec", default=None,
                   help="JSON of UNet2DConditionModel config values overriding --arch's UNet (a diffusers "
                        "unet/config.json works)")
    b.add_argument("--backend", default="torch", help="one of: torch, onnx, executorch")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--repeat", type=int, default=10)
    b.add_argument("--peak-gflops", type=float, default=None, help="fp32 peak (default: estimated from the CPU)")
    b.add_argument("--target", default="local",
                   help="local (this machine) or adb (an Android phone over adb; unverified on hardware, see "
                        "docs/benchmarks.md)")
    b.add_argument("--runner", default=None, help="--target adb: executor_runner binary built for the phone")
    b.add_argument("--serial", default=None, help="--target adb: device serial (adb -s)")
    b.add_argument("--adb", default="adb", help="--target adb: the adb executable")
    b.add_argument("--json", default=None, help="write the results (with machine info) to this .json file")
    b.add_argument("--html", default=None, help="write an HTML report (latency bars, FLOPs, machine info)")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_cmd_bench)
    b_sub = b.add_subparsers(dest="bench_command", parser_class=_Parser)
    bc = b_sub.add_parser("compare", help="configurations side by side in one process, with ratios to the first")
    bc.add_argument("sides", nargs="+", metavar="SIDE",
                    help="two or more of pipeline=DIR[,backend=torch|optimum] or bundle=DIR[,backend=onnx|executorch], "
                         "each with optional ,steps=N,guidance=W; ratios are each side over the first")
    bc.add_argument("--threads", type=int, default=2)
    bc.add_argument("--warmup", type=int, default=3)
    bc.add_argument("--repeat", type=int, default=10)
    bc.add_argument("--json", default=None, help="write the comparison to this .json file")
    bc.add_argument("--html", default=None, help="write an HTML report (latency bars, ratios, machine info)")
    bc.add_argument("--components", default=None, help="comma-separated subset of text_encoder,unet,vae_decoder "
                                                        "(default: all; end to end needs all)")
    bc.add_argument("--pairwise", action="store_true",
                    help="alternate A with each other side in turn, one pair loaded at a time (large models)")
    bc.add_argument("--no-progress", action="store_true")
    bc.set_defaults(func=_cmd_bench_compare)
    bb = b_sub.add_parser("blocks", help="per-block UNet latency table (JSON keyed by target; schema-validated)")
    bsrc = bb.add_mutually_exclusive_group()
    bsrc.add_argument("--pipeline", help="diffusers pipeline folder")
    bsrc.add_argument("--arch", help=f"named architecture with random weights; one of: {', '.join(ARCHITECTURES)}")
    bb.add_argument("--resolution", type=int, default=None, help="image size for --arch")
    bb.add_argument("--unet-spec", default=None, help="UNet config overrides for --arch (JSON)")
    bb.add_argument("--backend", default="torch", help="one of: torch, onnx, executorch (each block exported alone)")
    bb.add_argument("--batch", type=int, default=2, help="UNet batch (2: a CFG step)")
    bb.add_argument("--threads", type=int, default=2)
    bb.add_argument("--warmup", type=int, default=3)
    bb.add_argument("--repeat", type=int, default=10)
    bb.add_argument("--out", required=True, help="table file (.json); other targets in it are kept")
    bb.add_argument("--target-key", default=None, help="key of this table in the file (default: BACKEND-cpu-Nt)")
    bb.add_argument("--no-progress", action="store_true")
    bb.set_defaults(func=_cmd_bench_blocks)
    br = b_sub.add_parser("report", help="an HTML report from saved bench / bench compare JSON files")
    br.add_argument("results", nargs="+", help="JSON files written by bench --json (one per backend) and at most "
                                                "one by bench compare --json")
    br.add_argument("--out", required=True, help="output .html file")
    br.add_argument("--title", default="pocketdiff benchmark")
    br.set_defaults(func=_cmd_bench_report)

    def kd_args(p, steps, batch_size, lr, skip_prob):
        p.add_argument("--workdir", default=None, help="checkpoints + loss log (default: OUT.work); rerun to resume")
        p.add_argument("--steps", type=int, default=steps)
        p.add_argument("--batch-size", type=int, default=batch_size)
        p.add_argument("--lr", type=float, default=lr)
        p.add_argument("--skip-prob", type=float, default=skip_prob, help="per-step drop probability of each "
                                                                          "skippable (not removed) block")
        p.add_argument("--w-denoise", type=float, default=1.0)
        p.add_argument("--w-out-kd", type=float, default=1.0)
        p.add_argument("--w-feat-kd", type=float, default=1.0)
        p.add_argument("--data", default="toyworld", help="captioned-image source: toyworld, or imagefolder:DIR (images + metadata.jsonl)")
        p.add_argument("--force", action="store_true", help="replace an existing output folder")
        p.add_argument("--no-progress", action="store_true")

    sr = sub.add_parser("slim-robust", help="robust training with random block skipping (resumable; SnapFusion)")
    sr.add_argument("--pipeline", required=True, help="teacher pipeline folder")
    sr.add_argument("--out", required=True, help="output pipeline folder")
    kd_args(sr, steps=2000, batch_size=32, lr=1e-4, skip_prob=0.1)
    sr.set_defaults(func=_cmd_slim_robust)

    se = sub.add_parser("slim-evolve", help="architecture evolution to a latency budget, then materialise the slim "
                                            "UNet (resumable; SnapFusion)")
    se.add_argument("--pipeline", required=True, help="robust-trained pipeline folder (slim-robust's output)")
    se.add_argument("--out", required=True, help="output pipeline folder (with the slim UNet)")
    se.add_argument("--latency-table", required=True, help="per-block latency table (pocketdiff bench blocks)")
    se.add_argument("--target", default="onnx-cpu-2t", help="the table's key to read")
    se.add_argument("--budget", type=float, default=0.55, help="estimated latency / full UNet latency to reach")
    se.add_argument("--quality-floor", type=float, default=0.05,
                    help="proxy MSE to the full model above which a block is restored")
    se.add_argument("--max-iterations", type=int, default=64)
    se.add_argument("--probe-size", type=int, default=32, help="prompts in the fixed probe set")
    kd_args(se, steps=50, batch_size=32, lr=1e-4, skip_prob=0.1)  # --steps: the fine-tune between actions
    se.set_defaults(func=_cmd_slim_evolve)

    sf = sub.add_parser("slim-finetune", help="KD fine-tune of the materialised slim UNet from the teacher "
                                              "(resumable)")
    sf.add_argument("--pipeline", required=True, help="slim pipeline folder (slim-evolve's output)")
    sf.add_argument("--teacher", required=True, help="the original teacher pipeline folder")
    sf.add_argument("--out", required=True, help="output pipeline folder")
    kd_args(sf, steps=2000, batch_size=32, lr=1e-4, skip_prob=0.0)
    sf.set_defaults(func=_cmd_slim_finetune)

    b = sub.add_parser("build", help="run a recipe's stages on a teacher: slim, decoder, steps, export, bench, eval, "
                                     "report (resumable; reruns skip unchanged stages)")
    b.add_argument("--teacher", required=True, help="teacher pipeline folder")
    b.add_argument("--recipe", required=True, help="recipe TOML (recipes/toy.toml, recipes/toy-full.toml, ...)")
    b.add_argument("--out", required=True, help="work folder: one subfolder per stage")
    b.add_argument("--from", dest="from_stage", default=None, help="redo from this stage on")
    b.add_argument("--until", default=None, help="stop after this stage")
    b.add_argument("--set", action="append", help="override a recipe value, e.g. steps.distill.iters=500 (repeatable)")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_cmd_build)

    rg = sub.add_parser("regress", help="the quality-regression gate: evaluate a bundle against a baseline "
                                        "(exit 1 on a regression)")
    rg.add_argument("--bundle", required=True)
    rg.add_argument("--baseline", required=True, help="baseline JSON (benchmarks/baselines/*.json)")
    rg.add_argument("--eval-models", default=None, help="toy eval models folder (default: the shipped toy teacher)")
    rg.add_argument("--json", default=None, help="also write the evaluation and checks here")
    rg.set_defaults(func=_cmd_regress)

    from pocketdiff.distill.steps import StepDistillConfig

    d = StepDistillConfig()
    ds = sub.add_parser("distill-steps", help="progressive step distillation with CFG-aware regularisation, optionally "
                                              "a guidance-embedded student (resumable per round; SnapFusion)")
    ds.add_argument("--pipeline", required=True, help="the student's starting pipeline (the teacher, or a slim one)")
    ds.add_argument("--teacher", default=None, help="round 1's teacher pipeline (default: --pipeline)")
    ds.add_argument("--out", required=True, help="output pipeline folder: the last round's student")
    ds.add_argument("--workdir", default=None, help="every round's student, checkpoints, loss logs (default: "
                                                    "OUT.work); rerun to resume")
    ds.add_argument("--start-steps", type=int, default=d.start_steps, help="the teacher's DDIM steps in round 1")
    ds.add_argument("--rounds", type=int, default=d.rounds, help="halvings: 32 with 2 rounds ends at 8 steps")
    ds.add_argument("--iters", type=int, default=d.iters, help="training iterations per round")
    ds.add_argument("--v-warmup-iters", type=int, default=d.v_warmup_iters,
                    help="a first round teaching the teacher's own prediction in v form (0: none)")
    ds.add_argument("--batch-size", type=int, default=d.batch_size)
    ds.add_argument("--lr", type=float, default=d.lr)
    ds.add_argument("--lr-schedule", default=d.lr_schedule, help="per round: constant or cosine (decays to lr/20)")
    ds.add_argument("--ema-decay", type=float, default=d.ema_decay,
                    help="> 0: each round's student is the EMA of its weights at this decay (0: off)")
    ds.add_argument("--cfg-prob", type=float, default=d.cfg_prob, help="probability of the CFG-aware loss per sample")
    ds.add_argument("--w-min", type=float, default=d.w_min, help="CFG-aware guidance range, low end")
    ds.add_argument("--w-max", type=float, default=d.w_max, help="CFG-aware guidance range, high end")
    ds.add_argument("--guidance-embed", action="store_true", help="a single-pass student conditioned on w")
    ds.add_argument("--embed-dim", type=int, default=d.embed_dim, help="width of the w embedding")
    ds.add_argument("--caption-dropout", type=float, default=d.caption_dropout)
    ds.add_argument("--data", default=d.data, help="captioned-image source: toyworld, or imagefolder:DIR (images + metadata.jsonl)")
    ds.add_argument("--force", action="store_true", help="replace an existing output folder")
    ds.add_argument("--no-progress", action="store_true")
    ds.set_defaults(func=_cmd_distill_steps)

    dd = sub.add_parser("distill-decoder", help="an efficient image decoder trained on the teacher's own latents "
                                                "(resumable; SnapFusion)")
    dd.add_argument("--pipeline", required=True, help="teacher pipeline folder")
    dd.add_argument("--out", required=True, help="output pipeline folder (the teacher with the new VAE)")
    dd.add_argument("--workdir", default=None, help="latent cache, checkpoints, loss log (default: OUT.work)")
    dd.add_argument("--latent-cache", default=None, help="folder of the teacher-latent cache, shareable between runs "
                                                          "(default: WORKDIR)")
    dd.add_argument("--kind", default="pruned", help="pruned (channel-pruned AutoencoderKL decoder) or tiny (TAESD)")
    dd.add_argument("--width", type=float, default=0.5, help="pruned: decoder channel multiplier")
    dd.add_argument("--tiny-channels", type=int, default=64, help="tiny: channels per stage")
    dd.add_argument("--tiny-blocks", type=int, default=3, help="tiny: residual blocks per upsampling stage")
    dd.add_argument("--steps", type=int, default=3000)
    dd.add_argument("--batch-size", type=int, default=16)
    dd.add_argument("--lr", type=float, default=2e-4)
    dd.add_argument("--lr-schedule", default="cosine", help="constant or cosine (decays to lr/20)")
    dd.add_argument("--w-l1", type=float, default=1.0)
    dd.add_argument("--w-l2", type=float, default=1.0)
    dd.add_argument("--w-perceptual", type=float, default=0.1)
    dd.add_argument("--perceptual", default="clip", help="clip (a local CLIP image tower) or none")
    dd.add_argument("--perceptual-model", default=None, help="local CLIPModel folder for --perceptual clip")
    dd.add_argument("--n-generated", type=int, default=2000, help="teacher generations cached as latents")
    dd.add_argument("--gen-steps", type=int, default=25)
    dd.add_argument("--guidance", type=float, default=7.5)
    dd.add_argument("--n-encoded", type=int, default=2000, help="VAE-encoded real samples (0: none)")
    dd.add_argument("--latent-jitter", type=float, default=0.0, help="probability per training latent of a random "
                    "channel mix (recolours what the teacher decodes; the target is the teacher's decoding of it)")
    dd.add_argument("--jitter-scale", type=float, default=0.25, help="the channel mix is I + scale * N(0, 1)")
    dd.add_argument("--data", default="toyworld", help="prompt and image source: toyworld, or imagefolder:DIR (images + metadata.jsonl)")
    dd.add_argument("--force", action="store_true", help="replace an existing output folder")
    dd.add_argument("--no-progress", action="store_true")
    dd.set_defaults(func=_cmd_distill_decoder)

    g = sub.add_parser("generate", help="generate one image from a prompt")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--pipeline", help="diffusers pipeline folder (torch path)")
    src.add_argument("--onnx", help="exported ONNX folder (torch-free reference runtime)")
    src.add_argument("--bundle", help="app bundle (torch-free runtime; checksums verified first)")
    g.add_argument("--backend", default="onnx", help=f"runtime backend for --bundle; allowed: {', '.join(BACKENDS)}")
    g.add_argument("prompt")
    g.add_argument("--steps", type=int, default=None, help="default: a bundle's pinned steps, a distill-steps "
                   "student's trained steps, else 25")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale; <= 1 disables CFG "
                   "(default: a bundle's pinned guidance, else 7.5)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--scheduler", default=None, help=f"one of: {', '.join(SCHEDULERS)} (default: the pipeline's)")
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--truncate", action="store_true", help="cut prompts over 77 tokens instead of failing")
    g.add_argument("--out", default="out.png", help="output .png path")
    g.add_argument("--threads", type=int, default=None, help="runtime threads (default: all cores)")
    g.add_argument("--json", action="store_true", help="also print config and timings as JSON")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g.set_defaults(func=_cmd_generate)

    ev = sub.add_parser("eval", help="FID, CLIP score and attribute accuracy on a toy prompt set")
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument("--pipeline", help="diffusers pipeline folder (torch path)")
    src.add_argument("--onnx", help="exported ONNX folder (torch-free runtime)")
    src.add_argument("--bundle", help="app bundle (torch-free runtime on its ONNX models, the manifest's scheduler)")
    ev.add_argument("--prompts", default="toy-val", help="prompt set; allowed: toy-val")
    ev.add_argument("--steps", type=int, default=None, help="default: a bundle's pinned steps, a distill-steps "
                    "student's trained steps, else 50")
    ev.add_argument("--guidance", type=float, default=None, help="default: a bundle's pinned guidance, else 7.5")
    ev.add_argument("--scheduler", default="ddim")
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
    ev.set_defaults(func=_cmd_eval)

    toy = sub.add_parser("toy", help="the toy world and its teacher")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True, parser_class=_Parser)
    tt = toy_sub.add_parser("train-teacher", help="train toy CLIP, attribute checker, VAE and UNet (resumable)")
    tt.add_argument("--out", required=True, help="output folder: pipeline/, clip/, checker/")
    tt.add_argument("--quick", action="store_true", help="2 steps per part (smoke test, not a usable teacher)")
    tt.add_argument("--no-progress", action="store_true")
    tt.set_defaults(func=_cmd_toy_train_teacher)
    tb = toy_sub.add_parser("baseline", help="teacher quality at 50/25/8/4 steps for DDIM and DPM-Solver++")
    tb.add_argument("--teacher", default=str(TOY_TEACHER_DIR), help="folder with pipeline/, clip/, checker/")
    tb.add_argument("--n", type=int, default=500)
    tb.add_argument("--guidance", type=float, default=TEACHER_GUIDANCE)
    tb.add_argument("--seed", type=int, default=0)
    tb.add_argument("--out", default="docs/toy_baseline.md", help="writes .md and .json")
    tb.add_argument("--no-progress", action="store_true")
    tb.set_defaults(func=_cmd_toy_baseline)
    td = toy_sub.add_parser("demo", help="sample grid + quick eval of the shipped teacher as one HTML page")
    td.add_argument("--teacher", default=str(TOY_TEACHER_DIR))
    td.add_argument("--out", default="build/demo")
    td.add_argument("--steps", type=int, default=25)
    td.add_argument("--guidance", type=float, default=TEACHER_GUIDANCE)
    td.add_argument("--n", type=int, default=200, help="prompts in the quick eval")
    td.set_defaults(func=_cmd_toy_demo)
    return p


class _DropKnownNoise(logging.Filter):
    """diffusers warns at import that optimum and optimum-onnx share a package name (harmless, ENV.md)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Multiple distributions found for package optimum")


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("diffusers.utils.import_utils").addFilter(_DropKnownNoise())
    # coremltools logs at WARNING that prediction is unavailable off macOS (known: export/coreml.py)
    # and that tuples/int64 constants are converted; the exporter validates what matters.
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # "Loading pipeline components" bars; we draw our own
    except ImportError:
        pass
    try:
        return args.func(args)
    except PocketdiffError as exc:
        if args.debug:
            raise
        sys.stderr.write(f"error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
