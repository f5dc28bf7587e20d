"""Build stage ``budget``: BudgetFusion's step-budget predictor for the stage's input pipeline, as one recipe stage.

    the step student (or any pipeline) -> budget-data -> budget-train -> the pipeline with ``step_budget/``

Each step is its own command too (``budget_data.py``, ``budget_train.py``); this stage chains them in
``WORKDIR/budget.work/`` (the table kept, so a rerun resumes where it stopped) and writes the pipeline with the
predictor to ``WORKDIR/budget/``. The ``export`` stage after it exports the ``step_budget`` role and the manifest's
``step_budget`` entry, so ``--steps auto`` works on the student's bundle. Put it after ``steps`` (its step counts
are the student's; on a teacher, give the teacher's S) and right before ``export``: a later stage that rewrites the
pipeline does not carry ``step_budget/``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pocketdiff.build import Context, Stage
from pocketdiff.distill.budget_data import BudgetDataConfig, budget_data
from pocketdiff.distill.budget_train import BudgetTrainConfig, budget_train


@dataclass
class BudgetStage:
    data: BudgetDataConfig = field(default_factory=BudgetDataConfig)
    train: BudgetTrainConfig = field(default_factory=BudgetTrainConfig)

    def validate(self) -> "BudgetStage":
        self.data.validate()
        dataclasses.replace(self.train, data=self.train.data or "(the stage's own table)").validate()
        return self


def run_budget(ctx: Context, cfg: BudgetStage) -> None:
    work, source = ctx.work("budget"), ctx.pipeline_before("budget")
    work.mkdir(parents=True, exist_ok=True)
    table = budget_data(source, work / "data", cfg.data, work / "data.work", overwrite=True)
    budget_train(source, ctx.out("budget"), dataclasses.replace(cfg.train, data=str(table)), work / "train.work",
                 progress=ctx.progress, overwrite=True, stop_after=ctx.stop_after)


STAGE = Stage("budget", BudgetStage, run_budget, outputs_pipeline=True)
