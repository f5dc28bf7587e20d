"""``pocketdiff build``: the whole pipeline as one resumable recipe.

    pocketdiff build --teacher DIR --recipe recipes/toy.toml --out WORKDIR [--from STAGE] [--until STAGE] \
        [--set steps.iters=500 ...]

The recipe (TOML) names the stages to run, in the order of ``STAGES``, and configures each one::

    slim     bench blocks -> slim-robust -> slim-evolve -> slim-finetune   (the teacher -> a slim pipeline)
    decoder  distill-decoder                                               (-> the same with an efficient VAE)
    steps    distill-steps                                                 (-> the few-step student)
    export   the student's app bundle, and the teacher's ONNX bundle for the comparison
    bench    bench compare: teacher bundle (teacher_steps, CFG) vs student bundle, per component and end to end
    eval     pocketdiff eval of the teacher (its pipeline) and of the student (its bundle, torch-free runtime)
    report   one HTML page: grids, quality, latency, the SD1.5 ratios, every stage's loss curves

Each stage writes ``WORKDIR/<stage>/`` and keeps its checkpoints in ``WORKDIR/<stage>.work/``.
``WORKDIR/build.json`` records each stage's key (a hash of its config and of its input's key; the
teacher's key hashes its files) and whether it finished. A rerun skips finished stages whose key is
unchanged, resumes an interrupted stage from its checkpoints, and redoes from scratch a stage whose key
changed (and so every stage after it). ``--from STAGE`` redoes from STAGE; ``--until STAGE`` stops after it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
import tomllib
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from pocketdiff.distill.decoder import DecoderDistillConfig
from pocketdiff.distill.evolution import EvolveConfig
from pocketdiff.distill.kd import KDTrainConfig
from pocketdiff.distill.steps import StepDistillConfig
from pocketdiff.errors import PocketdiffError, choice_error

log = logging.getLogger(__name__)
BUILD_FILE = "build.json"
STEP_TEACHERS = ("original", "input")
EVAL_STUDENT = ("bundle", "pipeline")


@dataclass
class SlimStage:
    backend: str = "onnx"  # the per-block latency table's backend (benchmarks.blocks.BLOCK_BACKENDS)
    threads: int = 2
    repeat: int = 10
    robust: KDTrainConfig = field(default_factory=lambda: KDTrainConfig(steps=2000))
    evolve: EvolveConfig = field(default_factory=EvolveConfig)  # latency_table and target are set by the stage
    finetune: KDTrainConfig = field(default_factory=lambda: KDTrainConfig(steps=2000, skip_prob=0.0))


@dataclass
class StepsStage:
    distill: StepDistillConfig = field(default_factory=StepDistillConfig)
    teacher: str = "original"  # round 1's teacher: the original teacher, or the stage's input pipeline


@dataclass
class ExportStage:
    targets: tuple[str, ...] = ("onnx",)
    precision: str = "fp32"
    quantize: str | None = None
    guidance: float = 7.5  # the bundle's default guidance (> 1: CFG)


@dataclass
class BenchStage:
    teacher_steps: int = 50  # the teacher side of the comparison (the student runs its own steps)
    threads: int = 2
    warmup: int = 3
    repeat: int = 10


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

    @property
    def real(self) -> bool:
        return bool(self.captions)

    def check_real_inputs(self):
        """The real protocol's files, checked before a build starts (None on the toy protocol)."""
        from pocketdiff.benchmarks.quality import check_real_eval_inputs

        if not self.real:
            return None
        missing = [k for k in ("reference_dir", "clip_model", "inception_weights") if not getattr(self, k)]
        if missing:
            raise PocketdiffError(f"recipe [eval]: captions is set (the real-checkpoint protocol), so "
                                  f"{', '.join(missing)} must be set too")
        return check_real_eval_inputs(self.captions, self.reference_dir, self.clip_model,
                                      self.inception_weights or None, self.n)


@dataclass
class ReportStage:
    title: str = "pocketdiff build"
    # committed `bench compare` results of the SD1.5 architecture (random weights): the shipped slim spec
    # and the 0.5-width decoder against SD1.5's (make bench-slim-sd15, make bench-decoder-sd15)
    sd15_results: tuple[str, ...] = ("docs/sd15_slim_benchmark.json", "docs/sd15_decoder_benchmark.json")


@dataclass
class Recipe:
    stages: tuple[str, ...] = ()
    slim: SlimStage = field(default_factory=SlimStage)
    decoder: DecoderDistillConfig = field(default_factory=DecoderDistillConfig)
    steps: StepsStage = field(default_factory=StepsStage)
    export: ExportStage = field(default_factory=ExportStage)
    bench: BenchStage = field(default_factory=BenchStage)
    eval: EvalStage = field(default_factory=EvalStage)
    report: ReportStage = field(default_factory=ReportStage)

    def validate(self) -> "Recipe":
        if not self.stages:
            raise PocketdiffError(f"the recipe names no stages; allowed: {', '.join(STAGES)}")
        for s in self.stages:
            if s not in STAGES:
                raise choice_error("build stage", s, STAGES)
        order = [STAGES.index(s) for s in self.stages]
        if order != sorted(set(order)):
            raise PocketdiffError(f"recipe stages must be unique and in the order {' -> '.join(STAGES)}; got "
                                  f"{' -> '.join(self.stages)}")
        if "slim" in self.stages:  # (without a latency_table the stage measures one and fills it in)
            self.slim.robust.validate()
            self.slim.finetune.validate()
            if self.slim.evolve.latency_table:
                from pocketdiff.benchmarks.blocks import load_latency_table

                load_latency_table(self.slim.evolve.latency_table, self.slim.evolve.target)  # names a bad path/key
            dataclasses.replace(self.slim.evolve, latency_table="set by the slim stage").validate()
        if "decoder" in self.stages:
            self.decoder.validate()
        if "steps" in self.stages:
            if self.steps.teacher not in STEP_TEACHERS:
                raise choice_error("steps.teacher", self.steps.teacher, STEP_TEACHERS)
            self.steps.distill.validate()
        if self.eval.student not in EVAL_STUDENT:
            raise choice_error("eval.student", self.eval.student, EVAL_STUDENT)
        return self


# ---- recipe files ---------------------------------------------------------------------------------

def _convert(cls, data: Any, where: str):
    """``data`` (TOML values) as an instance of dataclass ``cls``; unknown keys are named with the allowed ones."""
    if not isinstance(data, dict):
        raise PocketdiffError(f"recipe: {where} must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise PocketdiffError(f"recipe: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in "
                              f"[{where}]; allowed: {', '.join(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _convert(hint, value, f"{where}.{name}")
        elif typing.get_origin(hint) is tuple:
            kwargs[name] = tuple(value) if isinstance(value, list) else value
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _set(data: dict, assignment: str) -> None:
    """Apply ``a.b=c`` to nested ``data``; ``c`` is read as a TOML value (a bare word is a string)."""
    if "=" not in assignment:
        raise PocketdiffError(f"--set needs KEY=VALUE (e.g. steps.distill.iters=500), got {assignment!r}")
    key, raw = (s.strip() for s in assignment.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    *path, last = key.split(".")
    node = data
    for p in path:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise PocketdiffError(f"--set {assignment}: {p} is not a table")
    node[last] = value


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise PocketdiffError(f"recipe {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PocketdiffError(f"recipe {path} is not valid TOML: {exc}") from None
    for o in overrides:
        _set(data, o)
    return _convert(Recipe, data, "recipe").validate()


# ---- keys and the build record --------------------------------------------------------------------

def tree_hash(path: str | Path) -> str:
    """sha256 over a folder's files (relative path, size and bytes), for the teacher's key."""
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + str(f.stat().st_size).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _key(stage: str, config: Any, input_key: str) -> str:
    blob = json.dumps({"stage": stage, "config": config, "input": input_key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class BuildRecord:
    """``WORKDIR/build.json``: per stage its key, status (running/done) and wall time; written atomically."""

    def __init__(self, workdir: Path):
        self.file = workdir / BUILD_FILE
        self.data = json.loads(self.file.read_text()) if self.file.is_file() else {"stages": {}}

    def get(self, stage: str) -> dict:
        return self.data["stages"].get(stage, {})

    def put(self, stage: str, **entry) -> None:
        from pocketdiff.distributed import is_main_process

        self.data["stages"][stage] = entry
        if not is_main_process():
            return
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.file)


# ---- the stages -----------------------------------------------------------------------------------

@dataclass
class Context:
    teacher: Path  # the teacher pipeline folder
    workdir: Path
    recipe: Recipe
    progress: bool = True
    stop_after: int | None = None  # tests: simulate a kill after this many training steps in a stage

    def out(self, stage: str) -> Path:
        return self.workdir / stage

    def work(self, stage: str) -> Path:
        return self.workdir / f"{stage}.work"

    def pipeline_before(self, stage: str) -> Path:
        """The newest pipeline a stage before ``stage`` produced (the teacher if none)."""
        for s in reversed(self.recipe.stages[:self.recipe.stages.index(stage)]):
            if s in PIPELINE_STAGES:
                return self.out(s)
        return self.teacher

    def student_bundle(self) -> Path:
        return self.out("export") / "student"

    def teacher_bundle(self) -> Path:
        return self.out("export") / "teacher"


def _run_slim(ctx: Context) -> None:
    from pocketdiff.benchmarks.blocks import measure_block_latency, target_key, write_latency_table
    from pocketdiff.benchmarks.latency import machine_info
    from pocketdiff.distill.evolution import evolve
    from pocketdiff.distill.robust_training import robust_train
    from pocketdiff.distill.slim_finetune import slim_finetune
    from pocketdiff.pipedir import load_pipeline

    from pocketdiff.distributed import barrier, is_main_process

    cfg, work, source = ctx.recipe.slim, ctx.work("slim"), ctx.pipeline_before("slim")
    work.mkdir(parents=True, exist_ok=True)
    if cfg.evolve.latency_table:  # a table measured elsewhere (on the phone, or on a quiet machine): used as is
        table, key = Path(cfg.evolve.latency_table), cfg.evolve.target
    else:
        table, key = work / "latency.json", target_key(cfg.backend, cfg.threads)
    if not table.is_file() and is_main_process():  # measured once, by the main process alone
        t = measure_block_latency(load_pipeline(source).unet, 2, cfg.backend, cfg.threads, 3, cfg.repeat)
        write_latency_table(table, key, t, machine_info(cfg.threads))
    barrier()
    if not (work / "robust").is_dir():
        robust_train(source, work / "robust", cfg.robust, work / "robust.work", stop_after=ctx.stop_after,
                     progress=ctx.progress)
    if not (work / "evolved").is_dir():
        evolve(work / "robust", work / "evolved", dataclasses.replace(cfg.evolve, latency_table=str(table), target=key),
               work / "evolve.work", stop_after=ctx.stop_after, progress=ctx.progress)
    slim_finetune(work / "evolved", ctx.teacher, ctx.out("slim"), cfg.finetune, work / "finetune.work",
                  stop_after=ctx.stop_after, progress=ctx.progress, overwrite=True)


def _run_decoder(ctx: Context) -> None:
    from pocketdiff.distill.decoder import distill_decoder

    distill_decoder(ctx.pipeline_before("decoder"), ctx.out("decoder"), ctx.recipe.decoder, ctx.work("decoder"),
                    stop_after=ctx.stop_after, progress=ctx.progress, overwrite=True)


def _run_steps(ctx: Context) -> None:
    from pocketdiff.distill.steps import distill_steps

    source = ctx.pipeline_before("steps")
    teacher = ctx.teacher if ctx.recipe.steps.teacher == "original" else source
    distill_steps(source, ctx.out("steps"), ctx.recipe.steps.distill, ctx.work("steps"), teacher_dir=teacher,
                  stop_after=ctx.stop_after, progress=ctx.progress, overwrite=True)


def _student_steps(ctx: Context, pipeline: Path) -> int:
    from pocketdiff.distill.steps import student_steps

    return student_steps(pipeline) or ctx.recipe.bench.teacher_steps


def _run_export(ctx: Context) -> None:
    from pocketdiff.export.bundle import ExportConfig, write_bundle

    cfg, student = ctx.recipe.export, ctx.pipeline_before("export")
    out = ctx.out("export")
    out.mkdir(parents=True, exist_ok=True)
    write_bundle(student, ctx.student_bundle(), ExportConfig(targets=cfg.targets, precision=cfg.precision,
                                                             quantize=cfg.quantize, steps=_student_steps(ctx, student),
                                                             guidance=cfg.guidance), overwrite=True)
    if "bench" in ctx.recipe.stages:  # the teacher side of the comparison
        write_bundle(ctx.teacher, ctx.teacher_bundle(), ExportConfig(targets=("onnx",), guidance=cfg.guidance,
                                                                     steps=ctx.recipe.bench.teacher_steps), overwrite=True)


def _run_bench(ctx: Context) -> None:
    from pocketdiff.benchmarks.compare import Side, compare

    cfg, g = ctx.recipe.bench, ctx.recipe.export.guidance
    student_steps = json.loads((ctx.student_bundle() / "manifest.json").read_text())["defaults"]["steps"]
    sides = [Side("bundle", ctx.teacher_bundle(), "onnx", cfg.teacher_steps, g),
             Side("bundle", ctx.student_bundle(), "onnx", student_steps, g)]
    result = compare(sides, cfg.threads, cfg.warmup, cfg.repeat)
    ctx.out("bench").mkdir(parents=True, exist_ok=True)
    (ctx.out("bench") / "compare.json").write_text(json.dumps(result, indent=1) + "\n")


def evaluate(source: str | Path, steps: int, guidance: float, cfg: EvalStage, out: Path, bundle: bool,
             scheduler: str | None) -> dict:
    """``pocketdiff eval`` on a pipeline folder or (``bundle``) a bundle through the runtime (onnxruntime):
    the toy protocol (prompt set, toy FID/CLIP, attribute checker), or with ``cfg.captions`` the real one
    (captions, Inception FID against reference images, CLIP score with a local CLIP)."""
    from pocketdiff.benchmarks.quality import eval_grid, evaluate_source, write_report
    from pocketdiff.generate import GenerateConfig

    gen = GenerateConfig(prompt="", steps=steps, guidance=guidance, seed=cfg.seed, scheduler=scheduler).validate()
    where = {"pipeline_dir": None if bundle else source, "bundle_dir": source if bundle else None}
    real = cfg.check_real_inputs() if cfg.real else None
    result, images = evaluate_source(gen, cfg.prompts, cfg.n, cfg.eval_models or None, real, **where)
    if real is not None:
        result["prompts"] = cfg.captions
    write_report(result, out, eval_grid(images))
    return result


def _run_eval(ctx: Context) -> None:
    cfg = ctx.recipe.eval
    out = ctx.out("eval")
    out.mkdir(parents=True, exist_ok=True)
    evaluate(ctx.teacher, cfg.teacher_steps, cfg.guidance, cfg, out / "teacher.json", bundle=False,
             scheduler=cfg.teacher_scheduler)
    steps = json.loads((ctx.student_bundle() / "manifest.json").read_text())["defaults"]["steps"]
    if cfg.student == "bundle":  # the app bundle on the torch-free runtime (onnxruntime, CPU)
        evaluate(ctx.student_bundle(), steps, cfg.guidance, cfg, out / "student.json", bundle=True, scheduler=None)
    else:  # the student pipeline the bundle was exported from, in diffusers (its own scheduler; GPU if any)
        evaluate(ctx.pipeline_before("export"), steps, cfg.guidance, cfg, out / "student.json", bundle=False,
                 scheduler=None)


def _run_report(ctx: Context) -> None:
    from pocketdiff.benchmarks.report import write_build_report

    write_build_report(ctx)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context], None]
    config: Callable[[Recipe], Any]  # the part of the recipe that keys this stage
    every_process: bool = False  # a training stage: every launched process runs it (else the main one alone)


# The one registry of build stages, in the order they run.
_REGISTRY = (
    Stage("slim", _run_slim, lambda r: asdict(r.slim), every_process=True),
    Stage("decoder", _run_decoder, lambda r: asdict(r.decoder), every_process=True),
    Stage("steps", _run_steps, lambda r: asdict(r.steps), every_process=True),
    Stage("export", _run_export, lambda r: {**asdict(r.export), "teacher_steps": r.bench.teacher_steps,
                                            "teacher_bundle": "bench" in r.stages}),
    Stage("bench", _run_bench, lambda r: asdict(r.bench)),
    Stage("eval", _run_eval, lambda r: asdict(r.eval)),
    Stage("report", _run_report, lambda r: asdict(r.report)),
)
STAGES = tuple(s.name for s in _REGISTRY)
PIPELINE_STAGES = ("slim", "decoder", "steps")  # stages whose output is a pipeline folder


def build(teacher: str | Path, recipe: Recipe, workdir: str | Path, from_stage: str | None = None,
          until: str | None = None, progress: bool = True, stop_after: int | None = None) -> dict:
    """Run ``recipe`` on ``teacher``; returns the build record (per stage: key, status, ran or skipped)."""
    from pocketdiff.pipedir import inspect_pipeline

    recipe.validate()
    for name, value in (("--from", from_stage), ("--until", until)):
        if value is not None and value not in recipe.stages:
            raise PocketdiffError(f"{name} {value!r} is not a stage of this recipe; its stages: "
                                  f"{', '.join(recipe.stages)}")
    inspect_pipeline(teacher)  # a bad teacher fails before anything is written
    if "eval" in recipe.stages:
        recipe.eval.check_real_inputs()  # so do the real eval protocol's missing files
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    from pocketdiff.distributed import barrier, finish, is_main_process

    ctx = Context(Path(teacher), workdir, recipe, progress, stop_after)
    record = BuildRecord(workdir)  # every process reads it before the main process changes it
    barrier()
    key = tree_hash(teacher)
    redo = False
    ran = {}
    stages = {s.name: s for s in _REGISTRY}
    for name in recipe.stages:
        stage = stages[name]
        key = _key(name, stage.config(recipe), key)
        prev = record.get(name)
        redo = redo or name == from_stage
        if not redo and prev.get("key") == key and prev.get("status") == "done":
            ran[name] = "skipped"
        else:
            if redo or (prev and prev.get("key") != key):  # another config or input: start this stage afresh
                if is_main_process():
                    for p in (ctx.out(name), ctx.work(name)):
                        shutil.rmtree(p, ignore_errors=True)
                barrier()
                redo = True
            resumed = prev.get("key") == key and prev.get("status") == "running"
            log.info("build: %s stage %s", "resuming" if resumed else "running", name)
            record.put(name, key=key, status="running")
            t0 = time.perf_counter()
            if stage.every_process:
                stage.run(ctx)
                barrier()  # the next stage reads what this one wrote
            elif is_main_process():  # (the training stages come first: the others have stopped by now)
                stage.run(ctx)
            record.put(name, key=key, status="done", wall_time_s=round(time.perf_counter() - t0, 1))
            ran[name] = "resumed" if resumed else "ran"
        if name == until:
            break
        later = recipe.stages[recipe.stages.index(name) + 1:]
        if not any(stages[n].every_process for n in later):
            finish()  # the main process alone exports, benchmarks, evaluates and reports
            if not is_main_process():
                break
    return {"workdir": str(workdir), "stages": ran, "record": record.data}
