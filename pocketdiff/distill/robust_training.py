"""Stage ``slim-robust``: robust training of a UNet with stochastic block skipping (SnapFusion §3.2).

The student is the teacher's UNet wrapped as an :class:`~pocketdiff.architectures.elastic_unet.ElasticUNet`.
Each step drops every skippable block independently with probability ``skip_prob`` and trains with
the KD job of :mod:`pocketdiff.distill.kd` against the frozen teacher: ``denoise``, ``out_kd`` and
``feat_kd``, weighted and logged separately. The output is a pipeline folder with the robust (full)
UNet and a ``slim-robust`` stage record.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path

import torch

from pocketdiff.architectures.elastic_unet import ElasticUNet
from pocketdiff.distill.kd import KDJob, KDTrainConfig, encoded_pool
from pocketdiff.loop import LoopConfig, train
from pocketdiff.errors import PocketdiffError
from pocketdiff.pipedir import StageRecord, load_pipeline, read_history, write_pipeline


def robust_train(pipeline_dir: str | Path, out_dir: str | Path, cfg: KDTrainConfig, workdir: str | Path,
                 stop_after: int | None = None, progress: bool = True, overwrite: bool = False) -> Path:
    """Fine-tune ``pipeline_dir``'s UNet to tolerate skipped blocks; write the pipeline to ``out_dir``."""
    from diffusers import DDPMScheduler

    cfg.validate()
    if Path(out_dir).exists() and not overwrite:
        raise PocketdiffError(f"output {out_dir} exists; pass overwrite to replace it")
    pipe = load_pipeline(pipeline_dir)
    torch.manual_seed(cfg.seed)
    pool = encoded_pool(pipe, cfg.data, cfg.pool_size, cfg.seed)
    teacher = copy.deepcopy(pipe.unet).eval().requires_grad_(False)
    student = ElasticUNet(pipe.unet)
    pipe.text_encoder.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    with KDJob(pipe, student, teacher, cfg, pool, DDPMScheduler.from_config(pipe.scheduler.config)) as job:
        summary = train(workdir, [student], opt, job.batch, job.loss,
                        LoopConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every, progress=progress),
                        {**asdict(cfg), "pipeline": str(Path(pipeline_dir).resolve())}, name="slim-robust",
                        stop_after=stop_after)
    pipe.unet.eval()
    history = [*read_history(pipeline_dir), StageRecord("slim-robust", {**asdict(cfg), "summary": summary})]
    return write_pipeline(pipe, out_dir, history, overwrite=overwrite)
