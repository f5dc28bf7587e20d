"""Stage ``slim-finetune``: knowledge distillation of the materialised slim UNet from the teacher.

After ``slim-evolve`` has chosen and materialised the slim UNet, this stage fine-tunes it against the
*original* teacher's UNet (not the robust-trained one), as SnapFusion and BK-SDM do: output KD,
feature KD at every down/mid/up block output, and the denoising loss, weighted and logged separately
(:mod:`pocketdiff.distill.kd`). ``skip_prob`` defaults to 0 here: the architecture is fixed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pocketdiff.architectures.elastic_unet import ElasticUNet
from pocketdiff.distill.kd import KDJob, KDTrainConfig, encoded_pool
from pocketdiff.loop import LoopConfig, train
from pocketdiff.errors import PocketdiffError
from pocketdiff.pipedir import StageRecord, load_pipeline, read_history, write_pipeline



@dataclass
class FinetuneConfig(KDTrainConfig):
    """``slim-finetune``'s KD job: the architecture is fixed, so no block is skipped."""

    skip_prob: float = 0.0


# the teacher's and student's UNets must agree on these for output and feature KD to be defined
MATCHING_KEYS = ("in_channels", "out_channels", "sample_size", "cross_attention_dim", "block_out_channels",
                 "down_block_types", "up_block_types", "layers_per_block")


def slim_finetune(pipeline_dir: str | Path, teacher_dir: str | Path, out_dir: str | Path, cfg: KDTrainConfig,
                  workdir: str | Path, stop_after: int | None = None, progress: bool = True,
                  overwrite: bool = False) -> Path:
    """Distil ``teacher_dir``'s UNet into ``pipeline_dir``'s slim UNet; write the pipeline to ``out_dir``."""
    from diffusers import DDPMScheduler

    cfg.validate()
    if Path(out_dir).exists() and not overwrite:
        raise PocketdiffError(f"output {out_dir} exists; pass overwrite to replace it")
    pipe = load_pipeline(pipeline_dir)
    teacher = load_pipeline(teacher_dir).unet.eval().requires_grad_(False)
    for key in MATCHING_KEYS:
        s, t = getattr(pipe.unet.config, key, None), getattr(teacher.config, key, None)
        if s != t:
            raise PocketdiffError(f"teacher {teacher_dir} and student {pipeline_dir} UNets differ in {key}: {t!r} vs "
                                  f"{s!r}; KD needs the same architecture family")
    torch.manual_seed(cfg.seed)
    pool = encoded_pool(pipe, cfg.data, cfg.pool_size, cfg.seed)
    student = ElasticUNet(pipe.unet)
    pipe.text_encoder.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    job_config = {**asdict(cfg), "pipeline": str(Path(pipeline_dir).resolve()),
                  "teacher": str(Path(teacher_dir).resolve())}
    with KDJob(pipe, student, teacher, cfg, pool, DDPMScheduler.from_config(pipe.scheduler.config)) as job:
        summary = train(workdir, [student], opt, job.batch, job.loss,
                        LoopConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every, progress=progress),
                        job_config, name="slim-finetune", stop_after=stop_after)
    pipe.unet.eval()
    record = StageRecord("slim-finetune", {**asdict(cfg), "teacher": str(Path(teacher_dir).resolve()),
                                           "summary": summary})
    return write_pipeline(pipe, out_dir, [*read_history(pipeline_dir), record], overwrite=overwrite)
