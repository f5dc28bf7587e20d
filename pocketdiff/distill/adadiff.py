"""Build stage ``adadiff``: AdaDiff early exits for the stage's input pipeline, as one recipe stage.

    the stage's input pipeline (the teacher, or the step student) -> adadiff-train -> adadiff-calibrate

Each step is its own command too (``adadiff_train.py``, ``adadiff_calibrate.py``); this stage chains them in
``WORKDIR/adadiff.work/`` (the trained pipeline kept, so a rerun resumes where it stopped) and writes the
calibrated pipeline to ``WORKDIR/adadiff/``. Its UNet config carries the exits and the threshold, and its stage
record pins the calibration's sampler: the ``export`` stage after it writes the segments, the exit heads and the
``adadiff`` step policy, with those defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pocketdiff.build import Context, Stage
from pocketdiff.distill.adadiff_calibrate import AdaDiffCalibrateConfig, adadiff_calibrate
from pocketdiff.distill.adadiff_train import AdaDiffTrainConfig, adadiff_train


@dataclass
class AdaDiffStage:
    train: AdaDiffTrainConfig = field(default_factory=AdaDiffTrainConfig)
    calibrate: AdaDiffCalibrateConfig = field(default_factory=AdaDiffCalibrateConfig)

    def validate(self) -> "AdaDiffStage":
        self.train.validate()
        self.calibrate.validate()
        return self


def run_adadiff(ctx: Context, cfg: AdaDiffStage) -> None:
    work, source = ctx.work("adadiff"), ctx.pipeline_before("adadiff")
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "trained").is_dir():
        adadiff_train(source, work / "trained", cfg.train, work / "train.work", stop_after=ctx.stop_after,
                      progress=ctx.progress)
    adadiff_calibrate(work / "trained", ctx.out("adadiff"), cfg.calibrate, work / "calibrate.work",
                      progress=ctx.progress, overwrite=True)


STAGE = Stage("adadiff", AdaDiffStage, run_adadiff, outputs_pipeline=True)
