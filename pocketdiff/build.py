"""``pocketdiff build``: the whole pipeline as one resumable recipe.

    pocketdiff build --teacher DIR --recipe recipes/toy.toml --out WORKDIR [--from STAGE] [--until STAGE] \
        [--set steps.distill.iters=500 ...]

**Stages declare themselves.** A stage is a :class:`Stage` (name, config dataclass, run function, whether
its output is a pipeline folder, the stages it needs before it) that its own module defines as ``STAGE``
and lists under the ``pocketdiff.stages`` entry points in ``pyproject.toml``; :func:`stages` loads them
all. This module names none of them, so a new stage needs no edit here (a test registers its own with
:func:`register_stage`). The shipped ones::

    slim     distill/slim.py        bench blocks -> slim-robust -> slim-evolve -> slim-finetune
    decoder  distill/decoder.py     distill-decoder (the same pipeline with an efficient VAE)
    steps    distill/steps.py       distill-steps (the few-step student)
    export   export/bundle.py       the student's app bundle
    bench    benchmarks/compare.py  bench compare: the teacher's bundle (exported here) vs the student's
    eval     benchmarks/evaluation.py  pocketdiff eval of the teacher and the student
    report   benchmarks/report.py   one HTML page: grids, quality, latency, the SD1.5 ratios, loss curves

**A recipe** (TOML) maps stage names to configs: ``stages`` lists the stages to run, in order, and one table
per stage configures it (``[decoder]``, ``[steps.distill]``); a stage without a table gets its config's
defaults. ``--set a.b=c`` overrides a value.

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
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from pocketdiff.distributed import barrier, finish, is_main_process
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.pipedir import inspect_pipeline

log = logging.getLogger(__name__)
BUILD_FILE = "build.json"
ENTRY_POINTS = "pocketdiff.stages"


@dataclass(frozen=True)
class Stage:
    """One build stage, declared once in its own module."""

    name: str
    config: type  # a dataclass; its defaults are the recipe's (and the stage command's) defaults
    run: Callable[["Context", Any], None]  # (context, this stage's config) -> writes ctx.out(name)
    outputs_pipeline: bool = False  # its output folder is a pipeline the next stages read
    every_process: bool = False  # a training stage: every launched process runs it (else the main one alone)
    needs: tuple[str, ...] = ()  # stages that must come before it in a recipe
    preflight: Callable[[Any], None] | None = None  # checks before the build writes anything (e.g. input files)


_REGISTRY: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Add (or replace) a stage in the registry."""
    if not dataclasses.is_dataclass(stage.config):
        raise PocketdiffError(f"stage {stage.name!r}: its config must be a dataclass, got {stage.config!r}")
    _REGISTRY[stage.name] = stage
    return stage


def unregister_stage(name: str) -> None:
    _REGISTRY.pop(name, None)


def stages() -> dict[str, Stage]:
    """Every known stage: the ``pocketdiff.stages`` entry points, and any registered by hand."""
    for ep in entry_points(group=ENTRY_POINTS):
        if ep.name not in _REGISTRY:
            register_stage(ep.load())
    return dict(_REGISTRY)


class Recipe:
    """Stage names to run, in order, and a config per known stage (``recipe.config("decoder")``, or
    ``recipe.decoder``)."""

    def __init__(self, stages_: tuple[str, ...] = (), configs: dict[str, Any] | None = None):
        known = stages()
        self.stages = tuple(stages_)
        self.configs = {name: (configs or {}).get(name) or s.config() for name, s in known.items()}

    def config(self, name: str) -> Any:
        if name not in self.configs:
            raise choice_error("build stage", name, self.configs)
        return self.configs[name]

    def __getattr__(self, name: str) -> Any:
        configs = self.__dict__.get("configs", {})
        if name in configs:
            return configs[name]
        raise AttributeError(name)

    def validate(self) -> "Recipe":
        known = stages()
        if not self.stages:
            raise PocketdiffError(f"the recipe names no stages; allowed: {', '.join(known)}")
        for s in self.stages:
            if s not in known:
                raise choice_error("build stage", s, known)
        if len(set(self.stages)) != len(self.stages):
            raise PocketdiffError(f"recipe stages must be unique; got {' -> '.join(self.stages)}")
        for i, s in enumerate(self.stages):
            for need in known[s].needs:
                if need not in self.stages[:i]:
                    raise PocketdiffError(f"recipe stage {s!r} needs {need!r} before it; got "
                                          f"{' -> '.join(self.stages)}")
            validate = getattr(self.configs[s], "validate", None)
            if validate is not None:
                validate()
        return self


# ---- recipe files ---------------------------------------------------------------------------------

def convert(cls, data: Any, where: str):
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
            kwargs[name] = convert(hint, value, f"{where}.{name}")
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
    known = stages()
    tables = {k: v for k, v in data.items() if k != "stages"}
    unknown = sorted(set(tables) - set(known))
    if unknown:
        raise choice_error("recipe table", unknown[0], ["stages", *known])
    listed = data.get("stages", [])
    if not isinstance(listed, list) or not all(isinstance(s, str) for s in listed):
        raise PocketdiffError(f"recipe: stages must be a list of stage names, got {listed!r}")
    configs = {name: convert(known[name].config, table, f"recipe.{name}") for name, table in tables.items()}
    return Recipe(tuple(listed), configs).validate()


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


def stage_key(stage: str, config: Any, input_key: str) -> str:
    blob = json.dumps({"stage": stage, "config": asdict(config), "input": input_key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class BuildRecord:
    """``WORKDIR/build.json``: per stage its key, status (running/done) and wall time; written atomically."""

    def __init__(self, workdir: Path):
        self.file = workdir / BUILD_FILE
        self.data = json.loads(self.file.read_text()) if self.file.is_file() else {"stages": {}}

    def get(self, stage: str) -> dict:
        return self.data["stages"].get(stage, {})

    def put(self, stage: str, **entry) -> None:
        self.data["stages"][stage] = entry
        if not is_main_process():
            return
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.file)


@dataclass
class Context:
    """What a stage's run function gets besides its own config."""

    teacher: Path  # the teacher pipeline folder
    workdir: Path
    recipe: Recipe
    progress: bool = True
    stop_after: int | None = None  # tests: simulate a kill after this many training steps in a stage
    known: dict[str, Stage] = field(default_factory=stages)

    def out(self, stage: str) -> Path:
        return self.workdir / stage

    def work(self, stage: str) -> Path:
        return self.workdir / f"{stage}.work"

    def pipeline_before(self, stage: str) -> Path:
        """The newest pipeline a stage before ``stage`` produced (the teacher if none)."""
        for s in reversed(self.recipe.stages[:self.recipe.stages.index(stage)]):
            if self.known[s].outputs_pipeline:
                return self.out(s)
        return self.teacher


def build(teacher: str | Path, recipe: Recipe, workdir: str | Path, from_stage: str | None = None,
          until: str | None = None, progress: bool = True, stop_after: int | None = None) -> dict:
    """Run ``recipe`` on ``teacher``; returns the build record (per stage: key, status, ran or skipped)."""
    recipe.validate()
    known = stages()
    for name, value in (("--from", from_stage), ("--until", until)):
        if value is not None and value not in recipe.stages:
            raise PocketdiffError(f"{name} {value!r} is not a stage of this recipe; its stages: "
                                  f"{', '.join(recipe.stages)}")
    inspect_pipeline(teacher)  # a bad teacher fails before anything is written
    for name in recipe.stages:  # so does any stage's missing input (e.g. the real eval protocol's files)
        if known[name].preflight is not None:
            known[name].preflight(recipe.config(name))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(Path(teacher), workdir, recipe, progress, stop_after, known)
    record = BuildRecord(workdir)  # every process reads it before the main process changes it
    barrier()
    key = tree_hash(teacher)
    redo = False
    ran = {}
    for name in recipe.stages:
        stage, config = known[name], recipe.config(name)
        key = stage_key(name, config, key)
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
                stage.run(ctx, config)
                barrier()  # the next stage reads what this one wrote
            elif is_main_process():  # (the training stages come first: the others have stopped by now)
                stage.run(ctx, config)
            record.put(name, key=key, status="done", wall_time_s=round(time.perf_counter() - t0, 1))
            ran[name] = "resumed" if resumed else "ran"
        if name == until:
            break
        later = recipe.stages[recipe.stages.index(name) + 1:]
        if not any(known[n].every_process for n in later):
            finish()  # the main process alone exports, benchmarks, evaluates and reports
            if not is_main_process():
                break
    return {"workdir": str(workdir), "stages": ran, "record": record.data}
