"""``toy``: the toy world's teacher (train it), its baseline table and its demo page."""

from __future__ import annotations

import json
from pathlib import Path

from pocketdiff.benchmarks.quality import EvalModels, baseline_table, markdown_table
from pocketdiff.benchmarks.toy_demo import run_demo
from pocketdiff.cli.common import Parser, Progress
from pocketdiff.pipedir import atomic_output_file
from pocketdiff.toyworld import TEACHER_GUIDANCE, TOY_TEACHER_DIR
from pocketdiff.toyworld.teacher import TeacherRecipe, train_teacher


def _cmd_toy_train_teacher(args) -> int:
    recipe = TeacherRecipe.quick() if args.quick else TeacherRecipe()
    out = train_teacher(args.out, recipe, progress=not args.no_progress)
    print(f"wrote the toy teacher to {out}/pipeline (eval models: {out}/clip, {out}/checker); "
          f"work dirs (checkpoints, loss logs) in {out}.work/")
    return 0


def _cmd_toy_baseline(args) -> int:
    models = EvalModels.load(args.teacher)
    with Progress("baseline", "config", args.no_progress) as progress:
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
    page = run_demo(args.teacher, args.out, guidance=args.guidance, steps=args.steps, n_eval=args.n)
    print(f"demo report: {page}")
    return 0


def add_commands(sub) -> None:
    toy = sub.add_parser("toy", help="the toy world and its teacher")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True, parser_class=Parser)
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
