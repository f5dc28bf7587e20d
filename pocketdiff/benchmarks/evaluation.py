"""Build stage ``eval``: ``pocketdiff eval`` of the teacher (its pipeline, at ``teacher_steps``) and of the
student (its app bundle on the torch-free runtime, or the pipeline the bundle came from), on the same
prompts and seeds; written to ``WORKDIR/eval/{teacher,student}.json`` (+ image grids).

**The handoff table** (``handoff``, the toy protocol): the same eval after every stage that wrote a pipeline
(a slim UNet or a new decoder at the teacher's steps and scheduler; a distilled student at its trained steps,
in diffusers) and of the bundle on every runtime backend it carries (onnxruntime, ExecuTorch), each row with
its change from the row before, and the stage that loses the most attribute accuracy named
(``WORKDIR/eval/handoff.json``; the build report shows it).

The toy protocol (a prompt set, toy FID/CLIP, the attribute checker) or, with ``captions`` set, the real
one (captions, Inception FID against reference images, CLIP score with a local CLIP): the COCO-30K
protocol for a real checkpoint, whose files are checked before the build writes anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pocketdiff.benchmarks.quality import check_real_eval_inputs, eval_grid, evaluate_source, write_report
from pocketdiff.build import Context, Stage
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.export.bundle import student_bundle
from pocketdiff.generate import GenerateConfig
from pocketdiff.pinned import pinned_defaults, trained_steps
from pocketdiff.pipedir import atomic_output_file
from pocketdiff.runtime.bundle import load_bundle
from pocketdiff.runtime.sessions import BACKENDS

EVAL_STUDENT = ("bundle", "pipeline")


@dataclass
class EvalStage:
    prompts: str = "toy-val"
    n: int = 1000
    seed: int = 0
    teacher_steps: int = 50
    teacher_scheduler: str = "ddim"
    guidance: float = 7.5
    student: str = "bundle"  # EVAL_STUDENT: the app bundle (runtime) or the pipeline it came from (diffusers)
    eval_models: str = ""  # the toy eval models' folder (default: the shipped toy teacher's)
    # A real checkpoint (COCO-30K protocol, `pocketdiff eval --captions`): set all four; prompts is then unused
    captions: str = ""  # text file, one caption per line (the first n are used)
    reference_dir: str = ""  # reference images for Inception FID
    clip_model: str = ""  # a local transformers CLIP folder for the CLIP score
    inception_weights: str = ""  # torch-fidelity's weights-inception-2015-12-05-6726825d.pth
    handoff: bool = True  # also evaluate every stage's pipeline and the bundle on each backend (toy protocol)
    reference_bundle: str = ""  # another bundle scored on the same prompts and seeds, shown beside the student
    reference_name: str = "reference"  # its name in eval/ (``eval/<name>.json``) and in the report

    @property
    def real(self) -> bool:
        return bool(self.captions)

    def validate(self) -> "EvalStage":
        if self.student not in EVAL_STUDENT:
            raise choice_error("eval.student", self.student, EVAL_STUDENT)
        if self.reference_name in ("teacher", "student", "handoff") or not self.reference_name.isidentifier():
            raise PocketdiffError(f"eval.reference_name must be a plain name other than teacher, student and "
                                  f"handoff; got {self.reference_name!r}")
        return self

    def check_real_inputs(self):
        """The real protocol's files, checked before a build starts (None on the toy protocol)."""
        if not self.real:
            return None
        missing = [k for k in ("reference_dir", "clip_model", "inception_weights") if not getattr(self, k)]
        if missing:
            raise PocketdiffError(f"recipe [eval]: captions is set (the real-checkpoint protocol), so "
                                  f"{', '.join(missing)} must be set too")
        return check_real_eval_inputs(self.captions, self.reference_dir, self.clip_model,
                                      self.inception_weights or None, self.n)


def evaluate(source: str | Path, steps: int, guidance: float, cfg: EvalStage, out: Path, bundle: bool,
             scheduler: str | None, backend: str = "onnx") -> dict:
    """``pocketdiff eval`` on a pipeline folder or (``bundle``) a bundle through the runtime on ``backend``."""
    gen = GenerateConfig(prompt="", steps=steps, guidance=guidance, seed=cfg.seed, scheduler=scheduler).validate()
    where = {"pipeline_dir": None if bundle else source, "bundle_dir": source if bundle else None}
    real = cfg.check_real_inputs() if cfg.real else None
    result, images = evaluate_source(gen, cfg.prompts, cfg.n, cfg.eval_models or None, real, **where,
                                     backend=backend)
    if real is not None:
        result["prompts"] = cfg.captions
    write_report(result, out, eval_grid(images))
    return result


HANDOFF_METRICS = ("attribute_accuracy", "fid", "clip_score")


def _row(name: str, what: str, result: dict) -> dict:
    return {"stage": name, "what": what, "steps": result["steps"], "scheduler": result["scheduler"],
            "source": result["source"], **{m: result[m] for m in HANDOFF_METRICS},
            "accuracy_heldout": result["attributes"].get("split=heldout", {}).get("all"),
            "accuracy_rephrased": result["rephrased"]["attribute_accuracy"]}


def handoff_table(rows: list[dict]) -> dict:
    """Each row's change from the row before, and the row (stage) that loses the most attribute accuracy."""
    for prev, row in zip(rows, rows[1:]):
        row["delta"] = {m: row[m] - prev[m] for m in HANDOFF_METRICS}
    worst = min(rows[1:], key=lambda r: r["delta"]["attribute_accuracy"]) if rows[1:] else None
    return {"rows": rows, "largest_accuracy_loss": worst and {"stage": worst["stage"], "what": worst["what"],
                                                                "points": 100 * worst["delta"]["attribute_accuracy"]}}


def run_eval(ctx: Context, cfg: EvalStage) -> None:
    out = ctx.out("eval")
    out.mkdir(parents=True, exist_ok=True)
    teacher = evaluate(ctx.teacher, cfg.teacher_steps, cfg.guidance, cfg, out / "teacher.json", bundle=False,
                       scheduler=cfg.teacher_scheduler)
    bundle = student_bundle(ctx)
    steps = pinned_defaults(bundle=bundle).steps
    if cfg.student == "bundle":  # the app bundle on the torch-free runtime (onnxruntime, CPU)
        student = evaluate(bundle, steps, cfg.guidance, cfg, out / "student.json", bundle=True, scheduler=None)
    else:  # the student pipeline the bundle was exported from, in diffusers (its own scheduler; GPU if any)
        student = evaluate(ctx.pipeline_before("export"), steps, cfg.guidance, cfg, out / "student.json",
                           bundle=False, scheduler=None)
    if cfg.reference_bundle:  # at its own pinned steps and guidance, as an app would run it
        pinned = pinned_defaults(bundle=cfg.reference_bundle)
        evaluate(cfg.reference_bundle, pinned.steps, pinned.guidance, cfg, out / f"{cfg.reference_name}.json",
                 bundle=True, scheduler=None)
    if not cfg.handoff or cfg.real:
        return
    rows = [_row("teacher", f"the teacher pipeline, {cfg.teacher_scheduler} {cfg.teacher_steps}", teacher)]
    for name in ctx.recipe.stages[:ctx.recipe.stages.index("export")]:
        if not ctx.known[name].outputs_pipeline:
            continue
        trained = trained_steps(ctx.out(name))  # a distilled student samples as trained, the others as the teacher
        scheduler = None if trained else cfg.teacher_scheduler
        result = evaluate(ctx.out(name), trained or cfg.teacher_steps, cfg.guidance, cfg,
                          out / f"handoff_{name}.json", bundle=False, scheduler=scheduler)
        rows.append(_row(name, f"its pipeline in diffusers, {scheduler or 'its own scheduler'} "
                               f"{trained or cfg.teacher_steps}", result))
    for target in load_bundle(bundle, verify=False).targets:
        if target not in BACKENDS:
            continue  # (Core ML runs on Apple devices only)
        result = student if target == "onnx" and cfg.student == "bundle" else evaluate(
            bundle, steps, cfg.guidance, cfg, out / f"handoff_bundle_{target}.json", bundle=True, scheduler=None,
            backend=target)
        rows.append(_row(f"bundle ({target})", f"the app bundle on the torch-free runtime, {target}", result))
    with atomic_output_file(out / "handoff.json") as tmp:
        tmp.write_text(json.dumps(handoff_table(rows), indent=1) + "\n")


STAGE = Stage("eval", EvalStage, run_eval, needs=("export",), preflight=EvalStage.check_real_inputs)
