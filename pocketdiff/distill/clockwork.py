"""Build stage ``clockwork``: train a Clockwork adaptor for the stage's input pipeline (the teacher, or the step
student after the ``steps`` stage, at its pinned steps) and write the pipeline with its clock.

The stage is ``clockwork-train`` (``clockwork_train.py``) in ``WORKDIR/clockwork.work/`` (a rerun resumes), its
output ``WORKDIR/clockwork/``; the ``export`` stage after it writes the full and light UNet graphs and the
``clockwork`` step policy with the pinned sampler.
"""

from __future__ import annotations

from pocketdiff.build import Context, Stage
from pocketdiff.distill.clockwork_train import ClockworkTrainConfig, clockwork_train


def run_clockwork(ctx: Context, cfg: ClockworkTrainConfig) -> None:
    clockwork_train(ctx.pipeline_before("clockwork"), ctx.out("clockwork"), cfg, ctx.work("clockwork"),
                    stop_after=ctx.stop_after, progress=ctx.progress, overwrite=True)


STAGE = Stage("clockwork", ClockworkTrainConfig, run_clockwork, outputs_pipeline=True)
