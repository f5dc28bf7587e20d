"""The sampler settings a bundle or a pipeline pins, read in one place.

- A bundle pins its default steps and guidance (``manifest.defaults``) and its scheduler
  (``manifest.scheduler.name``).
- A pipeline a ``distill-steps`` run wrote pins the steps it was trained for (its stage record's
  ``student_steps``); it samples with its own scheduler. A pipeline a ``ddsm-search`` wrote pins the
  sampler its width schedule was searched for (its record's ``pins``: steps, guidance, scheduler). Other
  pipelines pin nothing.

``generate``, ``eval``, ``regress`` and ``bench compare`` all take their defaults from
:func:`pinned_defaults`, and fall back to :data:`FALLBACK_STEPS`/``FALLBACK_GUIDANCE`` only where nothing
is pinned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pocketdiff.pipedir import inspect_pipeline, read_history
from pocketdiff.runtime.bundle import load_bundle
from pocketdiff.runtime.sampler import check_generation_args
from pocketdiff.runtime.schedulers import scheduler_name_for

FALLBACK_STEPS = 25
FALLBACK_GUIDANCE = 7.5


@dataclass(frozen=True)
class Pinned:
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None  # a runtime.schedulers.SCHEDULERS name; None: the source's own

    def resolve(self, steps: int | None, guidance: float | None, fallback_steps: int = FALLBACK_STEPS
                ) -> tuple[int, float]:
        """The user's value where given, else the pinned one, else the fallback."""
        steps = steps if steps is not None else self.steps if self.steps is not None else fallback_steps
        guidance = guidance if guidance is not None else self.guidance if self.guidance is not None \
            else FALLBACK_GUIDANCE
        return steps, guidance


def trained_steps(pipeline_dir: str | Path) -> int | None:
    """The sampler steps a ``distill-steps`` output was trained for (None for other pipelines)."""
    for rec in reversed(read_history(pipeline_dir)):
        if "student_steps" in rec.config:
            return int(rec.config["student_steps"])
    return None


def pinned_defaults(pipeline: str | Path | None = None, bundle: str | Path | None = None) -> Pinned:
    """What ``bundle`` (its manifest only; checksums are verified when its sessions load) or ``pipeline`` pins."""
    if bundle is not None:
        m = load_bundle(bundle, verify=False).manifest
        return Pinned(m["defaults"]["steps"], float(m["defaults"]["guidance"]), m["scheduler"]["name"])
    if pipeline is not None:
        for rec in reversed(read_history(pipeline)):
            if "pins" in rec.config:
                return Pinned(**rec.config["pins"])
            if "student_steps" in rec.config:
                break
        return Pinned(trained_steps(pipeline))
    return Pinned()


def deployed_sampler(pipeline_dir: str | Path, scheduler: str = "", steps: int = 0, guidance: float = 0.0
                     ) -> tuple[str, int, float]:
    """(scheduler, steps, guidance) a stage trains or calibrates for: the given ones (empty or 0: not given), else
    what the pipeline pins, else its own scheduler, :data:`FALLBACK_STEPS` and ``FALLBACK_GUIDANCE``."""
    pinned = pinned_defaults(pipeline=pipeline_dir)
    steps, guidance = pinned.resolve(steps or None, guidance or None)
    scheduler = scheduler or pinned.scheduler or scheduler_name_for(inspect_pipeline(pipeline_dir).scheduler_config)
    check_generation_args(steps, guidance)
    return scheduler, steps, guidance
