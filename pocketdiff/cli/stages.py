"""Stage commands (``slim-robust``, ``slim-evolve``, ``slim-finetune``, ``distill-decoder``, ``distill-steps``,
``ddsm-train``, ``ddsm-search``, ``clockwork-train``, ``adadiff-train``, ``adadiff-calibrate``, ``budget-data``,
``budget-train``),
``build`` and ``regress``.

Each stage command's flags are generated from its config dataclass (:data:`STAGE_COMMANDS`: command ->
config class; ``cli.common.add_config_args``), so every default lives in the dataclass; a command adds only
its folders (``--pipeline``, ``--out``, ``--workdir``) and switches (``--force``, ``--no-progress``).
"""

from __future__ import annotations

from pathlib import Path

from pocketdiff.benchmarks.regress import regress, table
from pocketdiff.build import build, load_recipe
from pocketdiff.cli.common import (Progress, add_config_args, add_trusted_key, config_from_args, note_verification, stage_parser,
                                   trusted_key, workdir_for)
from pocketdiff.distill.adadiff_calibrate import AdaDiffCalibrateConfig, adadiff_calibrate
from pocketdiff.distill.adadiff_train import AdaDiffTrainConfig, adadiff_train
from pocketdiff.distill.budget_data import BudgetDataConfig, budget_data, load_table
from pocketdiff.distill.budget_train import BudgetTrainConfig, budget_train
from pocketdiff.distill.clockwork_train import ClockworkTrainConfig, clockwork_train
from pocketdiff.distill.ddsm_search import DDSMSearchConfig, ddsm_search
from pocketdiff.distill.ddsm_train import DDSMTrainConfig, ddsm_train
from pocketdiff.distill.decoder import DecoderDistillConfig, distill_decoder
from pocketdiff.distill.evolution import EvolveConfig, evolve
from pocketdiff.distill.kd import KDTrainConfig
from pocketdiff.distill.robust_training import robust_train
from pocketdiff.distill.slim_finetune import FinetuneConfig, slim_finetune
from pocketdiff.distill.steps import StepDistillConfig, distill_steps, plan
from pocketdiff.distributed import is_main_process
from pocketdiff.pipedir import read_json


def _slim_robust(args, cfg: KDTrainConfig) -> str:
    out = robust_train(args.pipeline, args.out, cfg, workdir_for(args), progress=not args.no_progress,
                       overwrite=args.force)
    return f"wrote the robust-trained pipeline to {out}; checkpoints and loss log in {workdir_for(args)}"


def _slim_evolve(args, cfg: EvolveConfig) -> str:
    workdir = workdir_for(args)
    out = evolve(args.pipeline, args.out, cfg, workdir, progress=not args.no_progress, overwrite=args.force)
    rep = read_json(workdir / "report.json")
    return (f"{rep['finished']}: removed {len(rep['removed_blocks'])} blocks, estimated latency "
            f"{rep['estimate_ratio']:.3f} x the full UNet (budget {cfg.budget}), proxy {rep['proxy']:.4f}; "
            f"params {rep['params_slim'] / 1e6:.2f} M of {rep['params_full'] / 1e6:.2f} M\n"
            f"wrote the slim pipeline to {out}; report and plot: {workdir}/report.json, {workdir}/evolution.png")


def _slim_finetune(args, cfg: FinetuneConfig) -> str:
    out = slim_finetune(args.pipeline, args.teacher, args.out, cfg, workdir_for(args), progress=not args.no_progress,
                        overwrite=args.force)
    return f"wrote the fine-tuned slim pipeline to {out}; checkpoints and loss log in {workdir_for(args)}"


def _distill_decoder(args, cfg: DecoderDistillConfig) -> str:
    out = distill_decoder(args.pipeline, args.out, cfg, workdir_for(args), progress=not args.no_progress,
                          overwrite=args.force, cache_dir=args.latent_cache)
    return (f"wrote the pipeline with the distilled {cfg.kind} decoder to {out}; latent cache, checkpoints and "
            f"loss log in {workdir_for(args)}")


def _distill_steps(args, cfg: StepDistillConfig) -> str:
    out = distill_steps(args.pipeline, args.out, cfg, workdir_for(args), teacher_dir=args.teacher,
                        progress=not args.no_progress, overwrite=args.force)
    last = plan(cfg)[-1].steps
    return (f"wrote the {last}-step student pipeline to {out} (sample it with DDIM at {last} steps); every round's "
            f"student, checkpoints and loss logs in {workdir_for(args)}")


def _ddsm_train(args, cfg: DDSMTrainConfig) -> str:
    out = ddsm_train(args.pipeline, args.out, cfg, workdir_for(args), progress=not args.no_progress, overwrite=args.force)
    return (f"wrote the pipeline with the slimmable (DDSM) UNet, widths {', '.join(f'{w:g}' for w in cfg.widths)}, to "
            f"{out}; checkpoints and loss log (per width) in {workdir_for(args)}")


def _ddsm_search(args, cfg: DDSMSearchConfig) -> str:
    workdir = workdir_for(args)
    out = ddsm_search(args.pipeline, args.out, cfg, workdir, progress=not args.no_progress, overwrite=args.force)
    c = read_json(workdir / "report.json")["chosen"]
    return (f"schedule for {cfg.scheduler}, {cfg.steps} steps: widths {' '.join(f'{w:g}' for w in c['widths'])}; "
            f"compute {c['cost']:.3f} x the full width ({cfg.cost}), proxy {c['proxy']:.4f}\n"
            f"wrote the pipeline to {out}; report, generation log and plot: {workdir}/report.json, log.jsonl, "
            f"search.png")


def _clockwork_train(args, cfg: ClockworkTrainConfig) -> str:
    workdir = workdir_for(args)
    out = clockwork_train(args.pipeline, args.out, cfg, workdir, progress=not args.no_progress, overwrite=args.force)
    sched = read_json(Path(out) / "unet" / "config.json")["clockwork_schedule"]
    clock = f"light steps {sched['light_steps']}" if sched["light_steps"] else f"period {sched['period']}"
    return (f"wrote the pipeline with the {cfg.adaptor} Clockwork adaptor (boundary {cfg.boundary}; {sched['scheduler']}, "
            f"{sched['steps']} steps, guidance {sched['guidance']:g}, {clock}) to {out}; trajectories, checkpoints and "
            f"loss log in {workdir}")


def _adadiff_train(args, cfg: AdaDiffTrainConfig) -> str:
    workdir = workdir_for(args)
    out = adadiff_train(args.pipeline, args.out, cfg, workdir, progress=not args.no_progress, overwrite=args.force)
    exits = read_json(Path(out) / "unet" / "config.json")["adadiff_exits"]
    return (f"wrote the pipeline with AdaDiff exits at levels {exits} to {out} (no threshold yet: run "
            f"adadiff-calibrate); checkpoints and loss log (terms per exit) in {workdir}")


def _adadiff_calibrate(args, cfg: AdaDiffCalibrateConfig) -> str:
    workdir = workdir_for(args)
    out = adadiff_calibrate(args.pipeline, args.out, cfg, workdir, progress=not args.no_progress, overwrite=args.force)
    sched = read_json(Path(out) / "unet" / "config.json")["adadiff_schedule"]
    chosen = read_json(workdir / "curve.json")["chosen"]
    return (f"threshold {sched['threshold']:.4f} for {sched['scheduler']}, {sched['steps']} steps, guidance "
            f"{sched['guidance']:g}: UNet MACs {chosen['macs']:.3f} x the full UNet's, proxy {chosen['proxy']:.4f} "
            f"(rule {cfg.rule})\nwrote the pipeline to {out}; curve and plot: {workdir}/curve.json, curve.png")


def _budget_data(args, cfg: BudgetDataConfig) -> str:
    with Progress("budget-data", "chunk", args.no_progress) as progress:
        out = budget_data(args.pipeline, args.out, cfg, workdir_for(args), progress=progress, overwrite=args.force)
    t = load_table(out)
    j = list(t["metrics"]).index("dreamsim")
    means = ", ".join(f"{s}: {d:.4f}" for s, d in zip(t["step_counts"], t["curves"][:, :, j].mean(0)))
    return (f"wrote {len(t['prompt'])} prompts x {len(t['step_counts'])} step counts to {out}; mean DreamSim-like "
            f"distance to the {t['step_counts'][-1]}-step image per step count: {means}")


def _budget_train(args, cfg: BudgetTrainConfig) -> str:
    workdir = workdir_for(args)
    out = budget_train(args.pipeline, args.out, cfg, workdir, progress=not args.no_progress, overwrite=args.force)
    rep = read_json(workdir / "report.json")
    errs = "; ".join(f"{k} {v['heldout']['weighted_std_mse']:.4f}" for k, v in rep["kinds"].items())
    presets = ", ".join(f"{k} {v['mean_steps']:.2f} steps" for k, v in rep["presets"].items())
    return (f"kept the {rep['kept']} predictor (held-out standardised MSE: {errs}); presets on the held-out prompts: "
            f"{presets} (default {rep['default_preset']})\nwrote the pipeline with step_budget/ to {out}; report "
            f"and loss logs in {workdir}")


# command -> (config dataclass, handler, help, (extra flag, required, help)...)
STAGE_COMMANDS = {
    "slim-robust": (KDTrainConfig, _slim_robust, "robust training with random block skipping (resumable; "
                    "SnapFusion)", (("--pipeline", True, "teacher pipeline folder"),)),
    "slim-evolve": (EvolveConfig, _slim_evolve, "architecture evolution to a latency budget, then materialise the "
                    "slim UNet (resumable; SnapFusion)",
                    (("--pipeline", True, "robust-trained pipeline folder (slim-robust's output)"),)),
    "slim-finetune": (FinetuneConfig, _slim_finetune, "KD fine-tune of the materialised slim UNet from the teacher "
                      "(resumable)", (("--pipeline", True, "slim pipeline folder (slim-evolve's output)"),
                                      ("--teacher", True, "the original teacher pipeline folder"))),
    "distill-decoder": (DecoderDistillConfig, _distill_decoder, "an efficient image decoder trained on the "
                        "teacher's own latents (resumable; SnapFusion)",
                        (("--pipeline", True, "teacher pipeline folder"),
                         ("--latent-cache", False, "folder of the teacher-latent cache, shareable between runs "
                                                   "(default: WORKDIR)"))),
    "distill-steps": (StepDistillConfig, _distill_steps, "progressive step distillation with CFG-aware "
                      "regularisation, optionally a guidance-embedded student (resumable per round; SnapFusion)",
                      (("--pipeline", True, "the student's starting pipeline (the teacher, or a slim one)"),
                       ("--teacher", False, "round 1's teacher pipeline (default: --pipeline)"))),
    "ddsm-train": (DDSMTrainConfig, _ddsm_train, "sandwich training of a slimmable UNet at several widths "
                   "(resumable; DDSM)", (("--pipeline", True, "teacher (or slim) pipeline folder"),)),
    "ddsm-search": (DDSMSearchConfig, _ddsm_search, "evolutionary search for a UNet width per step (resumable; "
                    "DDSM)", (("--pipeline", True, "the DDSM pipeline folder (ddsm-train's output)"),)),
    "clockwork-train": (ClockworkTrainConfig, _clockwork_train, "distil a Clockwork adaptor on the deployed sampler's "
                        "trajectories and set the clock (resumable; Clockwork)",
                        (("--pipeline", True, "teacher or student pipeline folder"),)),
    "adadiff-train": (AdaDiffTrainConfig, _adadiff_train, "train AdaDiff exit heads and uncertainty estimators on a "
                      "frozen UNet (resumable; AdaDiff)", (("--pipeline", True, "teacher or student pipeline folder"),)),
    "adadiff-calibrate": (AdaDiffCalibrateConfig, _adadiff_calibrate, "sweep the AdaDiff exit threshold on calibration "
                          "prompts and pick one (resumable; AdaDiff)",
                          (("--pipeline", True, "the pipeline with exits (adadiff-train's output)"),)),
    "budget-data": (BudgetDataConfig, _budget_data, "images of each prompt at every step count and their perceptual "
                    "quality against the largest (resumable; BudgetFusion)",
                    (("--pipeline", True, "the pipeline whose step budget is learnt (the step student)"),)),
    "budget-train": (BudgetTrainConfig, _budget_train, "train and compare step-budget predictors on a budget-data "
                     "table; calibrate the --steps auto presets (resumable; BudgetFusion)",
                     (("--pipeline", True, "the pipeline the table was made with"),)),
}


def _run_stage_command(args) -> int:
    cls, handler = STAGE_COMMANDS[args.command][:2]
    print(handler(args, config_from_args(cls, args).validate()))
    return 0


def _cmd_build(args) -> int:
    recipe = load_recipe(args.recipe, args.set or [])
    res = build(args.teacher, recipe, args.out, from_stage=args.from_stage, until=args.until,
                progress=not args.no_progress)
    if not is_main_process():  # (accelerate launch: the other processes stop after the training stages)
        return 0
    for name, what in res["stages"].items():
        print(f"  {name:<8} {what}")
    report = Path(args.out) / "report" / "index.html"
    print(f"build in {args.out}" + (f"; report: {report}" if report.is_file() else ""))
    return 0


def _cmd_regress(args) -> int:
    passed, checks, _ = regress(args.bundle, args.baseline, args.eval_models, args.json,
                                trusted_key=trusted_key(args, args.bundle))
    note_verification(args, args.bundle)
    print(table(checks))
    print("quality gate: " + ("passed" if passed else f"FAILED ({sum(not c.ok for c in checks)} regressed)"))
    return 0 if passed else 1


def add_commands(sub) -> None:
    for name, (cls, _, help_text, extra) in STAGE_COMMANDS.items():
        p = stage_parser(sub, name, help_text)
        for flag, required, flag_help in extra:
            p.add_argument(flag, required=required, default=None, help=flag_help)
        p.add_argument("--out", required=True, help="output pipeline folder")
        p.add_argument("--workdir", default=None, help="checkpoints and loss logs (default: OUT.work); rerun to "
                                                       "resume")
        add_config_args(p, cls)
        p.add_argument("--force", action="store_true", help="replace an existing output folder")
        p.add_argument("--no-progress", action="store_true")
        p.set_defaults(func=_run_stage_command)

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
    add_trusted_key(rg)
    rg.set_defaults(func=_cmd_regress)
