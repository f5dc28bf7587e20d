"""Build stage ``ddsm``: a slimmable UNet with a width per step (DDSM), as one recipe stage.

    the stage's input pipeline (the teacher, or the slim one) -> ddsm-train -> ddsm-search

Each step is its own command too (``ddsm_train.py``, ``ddsm_search.py``); this stage chains them in
``WORKDIR/ddsm.work/`` (the trained pipeline kept, so a rerun resumes where it stopped) and writes the searched
pipeline to ``WORKDIR/ddsm/``. Its UNet config carries the schedule, and its stage record pins the search's
sampler, steps and guidance: the ``export`` stage after it writes one UNet per width the schedule uses and
the ``ddsm`` step policy, with those defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pocketdiff.build import Context, Stage
from pocketdiff.distill.ddsm_search import DDSMSearchConfig, ddsm_search
from pocketdiff.distill.ddsm_train import DDSMTrainConfig, ddsm_train


@dataclass
class DDSMStage:
    train: DDSMTrainConfig = field(default_factory=DDSMTrainConfig)
    search: DDSMSearchConfig = field(default_factory=DDSMSearchConfig)

    def validate(self) -> "DDSMStage":
        self.train.validate()
        self.search.validate()
        return self


def run_ddsm(ctx: Context, cfg: DDSMStage) -> None:
    work, source = ctx.work("ddsm"), ctx.pipeline_before("ddsm")
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "trained").is_dir():
        ddsm_train(source, work / "trained", cfg.train, work / "train.work", stop_after=ctx.stop_after,
                   progress=ctx.progress)
    ddsm_search(work / "trained", ctx.out("ddsm"), cfg.search, work / "search.work", stop_after=ctx.stop_after,
                progress=ctx.progress, overwrite=True)


STAGE = Stage("ddsm", DDSMStage, run_ddsm, outputs_pipeline=True)
