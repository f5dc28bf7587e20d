"""Build stage ``slim``: the UNet slimmed by redundancy analysis (SnapFusion §3), as one recipe stage.

    latency table (``bench blocks``, or the recipe's own) -> slim-robust -> slim-evolve -> slim-finetune

Each step is its own command too (``robust_training.py``, ``evolution.py``, ``slim_finetune.py``); this stage
chains them in ``WORKDIR/slim.work/`` (each sub-result kept, so a rerun resumes where it stopped) and writes
the fine-tuned slim pipeline to ``WORKDIR/slim/``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from pocketdiff.benchmarks.blocks import load_latency_table, measure_block_latency, target_key, write_latency_table
from pocketdiff.benchmarks.latency import machine_info
from pocketdiff.build import Context, Stage
from pocketdiff.distill.evolution import EvolveConfig, evolve
from pocketdiff.distill.kd import KDTrainConfig
from pocketdiff.distill.robust_training import robust_train
from pocketdiff.distill.slim_finetune import FinetuneConfig, slim_finetune
from pocketdiff.distributed import barrier, is_main_process
from pocketdiff.pipedir import load_pipeline


@dataclass
class SlimStage:
    backend: str = "onnx"  # the per-block latency table's backend (benchmarks.blocks.BLOCK_BACKENDS)
    threads: int = 2
    repeat: int = 10
    robust: KDTrainConfig = field(default_factory=KDTrainConfig)
    evolve: EvolveConfig = field(default_factory=EvolveConfig)  # latency_table and target are set by the stage
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def validate(self) -> "SlimStage":
        self.robust.validate()
        self.finetune.validate()
        if self.evolve.latency_table:  # a given table: names a bad path or key now
            load_latency_table(self.evolve.latency_table, self.evolve.target)
        # (without a latency_table the stage measures one and fills it in)
        dataclasses.replace(self.evolve, latency_table="set by the slim stage").validate()
        return self


def run_slim(ctx: Context, cfg: SlimStage) -> None:
    work, source = ctx.work("slim"), ctx.pipeline_before("slim")
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


STAGE = Stage("slim", SlimStage, run_slim, outputs_pipeline=True, every_process=True)
