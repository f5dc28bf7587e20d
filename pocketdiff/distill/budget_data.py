"""``pocketdiff budget-data``: BudgetFusion's dataset, the perceptual quality curve of every prompt over step counts.

    pipeline + N prompts -> for each step count s in S: the image from the same seed -> every metric of
    ``benchmarks/perceptual.py`` against the image at the largest s -> OUT/budget_data.npz

The images come from the pipeline's torch path (diffusers, batched; the runtime's RNG latents, so the same seed
gives the same image the runtime makes, within 2/255) with the deployed sampler (``pinned.deployed_sampler``).

**The table** (one NPZ): ``prompt`` [N], ``seed`` [N], ``split`` [N], ``kind`` [N] (single / pair),
``background`` [N], ``scene`` [N] (JSON), ``step_counts`` [K], ``metrics`` [M] (``perceptual.METRICS`` order),
``curves`` [N, K, M] float32, ``sharpness_raw`` [N, K], ``images`` [N, K, H, W, 3] uint8 with ``keep_images``,
and ``meta`` (JSON: the config, the sampler, the pipeline).

**Resumable:** prompts go in chunks; each finished chunk is one part file in the work folder (written atomically),
so a rerun after a kill redoes only the chunk it was in. A rerun with a larger ``n`` extends the table (the
prompts are a deterministic stream: the first n are the same). A work folder made with another config is refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pocketdiff.benchmarks.perceptual import METRICS, similarity_table
from pocketdiff.benchmarks.quality import EvalModels, prompt_set
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.generate import GenerateConfig, load_torch_pipeline, torch_batch
from pocketdiff.pinned import deployed_sampler
from pocketdiff.pipedir import atomic_output_file, inspect_pipeline
from pocketdiff.toyworld import TOY_TEACHER_DIR
from pocketdiff.toyworld.world import batch

log = logging.getLogger(__name__)
PROMPT_SOURCES = ("toy-train", "toy-val")
TABLE = "budget_data.npz"
STUDENT_STEP_COUNTS = (1, 2, 3, 4, 6, 8)  # S for a few-step student (a teacher: 2,4,6,8,12,16,25,50)


@dataclass
class BudgetDataConfig:
    prompts: str = "toy-train"  # toy-train (the predictor's training data) or toy-val (the eval's prompts)
    n: int = 5000  # prompts
    step_counts: tuple[int, ...] = STUDENT_STEP_COUNTS  # S; the largest is the reference
    scheduler: str = ""  # empty: what the pipeline pins, else its own
    guidance: float = 0.0  # 0: what the pipeline pins, else 7.5
    seed: int = 0  # prompt i uses seed + i at every step count (toy-val: the prompt set's seed too)
    chunk: int = 256  # prompts per part file (and per torch batch)
    keep_images: bool = False  # store every image in the table (the eval set does, to score the choices)
    eval_models: str = ""  # folder with the toy CLIP (clip/); empty: the shipped toy teacher's

    def validate(self) -> "BudgetDataConfig":
        if self.prompts not in PROMPT_SOURCES:
            raise choice_error("budget-data prompts", self.prompts, PROMPT_SOURCES)
        if self.n < 1 or self.chunk < 1:
            raise PocketdiffError(f"budget-data needs n >= 1 and chunk >= 1, got n={self.n}, chunk={self.chunk}")
        s = list(self.step_counts)
        if len(s) < 2 or any(isinstance(k, bool) or int(k) != k or k < 1 for k in s) or s != sorted(set(s)):
            raise PocketdiffError(f"step_counts must be at least two increasing integers >= 1, got {self.step_counts}")
        return self


@dataclass
class PromptRow:
    prompt: str
    seed: int
    split: str
    kind: str
    background: str
    scene: str  # JSON


def prompt_rows(cfg: BudgetDataConfig) -> list[PromptRow]:
    """The config's prompts, deterministic from its seed."""
    if cfg.prompts == "toy-val":  # exactly the prompts and seeds `pocketdiff eval` uses
        items = prompt_set("toy-val", max(cfg.n, 2), cfg.seed)[:cfg.n]
        return [PromptRow(it.prompt, cfg.seed + i, it.split, it.kind, it.scene.background,
                          json.dumps(it.scene.to_dict())) for i, it in enumerate(items)]
    return [PromptRow(s.caption, cfg.seed + i, "train", "single" if s.scene.relation is None else "pair",
                      s.scene.background, json.dumps(s.scene.to_dict()))
            for i, s in enumerate(batch(cfg.seed + 101, cfg.n, "train"))]


def _part_name(start: int) -> str:
    return f"part-{start:07d}.npz"


def _part_done(path: Path, rows: int) -> bool:
    """A finished chunk's part file holding exactly ``rows`` prompts (a table's last chunk, later extended by a larger
    ``n``, holds fewer: it is redone)."""
    if not path.is_file():
        return False
    with np.load(path) as z:
        return z["curves"].shape[0] == rows


def _check_workdir(workdir: Path, record: dict) -> None:
    f = workdir / "config.json"
    if f.is_file():
        have = json.loads(f.read_text())
        if have != record:
            raise PocketdiffError(f"{workdir} holds budget data of another config ({have}); use a new work dir or "
                                  "delete it")
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        with atomic_output_file(f) as tmp:
            tmp.write_text(json.dumps(record, indent=1))


def chunk_curves(pipe, latent_shape, clip, rows: list[PromptRow], cfg: BudgetDataConfig, guidance: float,
                 keep_images: bool) -> dict[str, np.ndarray]:
    """One chunk: images at every step count, the metrics against the largest -> arrays of the table."""
    prompts = [r.prompt for r in rows]
    images = [torch_batch(pipe, latent_shape, prompts, GenerateConfig(prompts[0], steps=s, guidance=guidance),
                          rows[0].seed) for s in cfg.step_counts]  # K x [n, H, W, 3]
    ref = images[-1]
    tables = [similarity_table(clip, im, ref) for im in images]
    curves = np.stack([np.stack([t[m] for m in METRICS], -1) for t in tables], 1).astype(np.float32)  # [n, K, M]
    out = {"curves": curves, "sharpness_raw": np.stack([t["sharpness_raw"] for t in tables], 1).astype(np.float32)}
    if keep_images:
        out["images"] = np.stack(images, 1)  # [n, K, H, W, 3]
    return out


def budget_data(pipeline_dir: str | Path, out_dir: str | Path, cfg: BudgetDataConfig, workdir: str | Path,
                progress: Callable[[int, int], None] | None = None, overwrite: bool = False) -> Path:
    """Write ``out_dir/budget_data.npz`` (resumable in ``workdir``); returns its path."""
    cfg.validate()
    out = Path(out_dir) / TABLE
    if out.exists() and not overwrite:
        raise PocketdiffError(f"output {out} exists; pass --force to replace it")
    info = inspect_pipeline(pipeline_dir)
    scheduler, _, guidance = deployed_sampler(pipeline_dir, cfg.scheduler, 0, cfg.guidance)
    models = Path(cfg.eval_models or TOY_TEACHER_DIR)
    if not (models / "clip" / "config.json").is_file():
        raise PocketdiffError(f"eval models folder {models} has no clip/ (expected clip/config.json)")
    meta = {"config": asdict(cfg), "scheduler": scheduler, "guidance": guidance, "pipeline": str(pipeline_dir),
            "metrics": {m: ("higher" if hi else "lower") for m, hi in METRICS.items()}}
    workdir = Path(workdir)
    _check_workdir(workdir, json.loads(json.dumps({**meta, "config": {**meta["config"], "n": None}})))
    rows = prompt_rows(cfg)
    starts = list(range(0, len(rows), cfg.chunk))
    todo = [s for s in starts if not _part_done(workdir / _part_name(s), len(rows[s:s + cfg.chunk]))]
    if todo:
        pipe, _ = load_torch_pipeline(pipeline_dir, scheduler)
        clip = EvalModels.load_clip(models)
        log.info("budget-data: %d of %d chunks to do (%s, guidance %g, S=%s)", len(todo), len(starts), scheduler,
                 guidance, list(cfg.step_counts))
        for k, start in enumerate(todo):
            if progress:
                progress(len(starts) - len(todo) + k, len(starts))
            part = chunk_curves(pipe, info.latent_shape, clip, rows[start:start + cfg.chunk], cfg, guidance,
                                cfg.keep_images)
            with atomic_output_file(workdir / _part_name(start)) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **part)
    if progress:
        progress(len(starts), len(starts))
    parts = [np.load(workdir / _part_name(s)) for s in starts]
    table = {key: np.concatenate([p[key] for p in parts]) for key in parts[0].files}
    if any(len(v) != len(rows) for v in table.values()):  # every part was checked above: a broken invariant
        raise PocketdiffError(f"budget data parts in {workdir} do not add up to {len(rows)} prompts")
    table.update({f: np.array([getattr(r, f) for r in rows]) for f in PromptRow.__dataclass_fields__},
                 step_counts=np.array(cfg.step_counts, dtype=np.int64), metrics=np.array(list(METRICS)),
                 meta=np.array(json.dumps(meta)))
    with atomic_output_file(out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **table)
    return out


def load_table(path: str | Path) -> dict:
    """A ``budget_data.npz`` as a dict of arrays, with ``meta`` parsed; one error line for a missing or bad file."""
    path = Path(path)
    if path.is_dir():
        path = path / TABLE
    if not path.is_file():
        raise PocketdiffError(f"budget data {path} does not exist (run pocketdiff budget-data)")
    with np.load(path, allow_pickle=False) as z:
        table = {k: z[k] for k in z.files}
    missing = {"prompt", "curves", "step_counts", "metrics", "meta"} - set(table)
    if missing:
        raise PocketdiffError(f"{path} is not a budget-data table: no {', '.join(sorted(missing))}")
    table["meta"] = json.loads(str(table["meta"]))
    return table
