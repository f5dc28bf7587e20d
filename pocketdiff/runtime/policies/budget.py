"""BudgetFusion: the step count, picked per prompt before the loop (``--steps auto``).

Not a step policy: it runs once, after the text encoder, and hands the loop a step count. The role
``step_budget`` maps the prompt's ``last_hidden_state`` [1, 77, D] to ``quality`` [1, K, M], the predicted
perceptual quality of the image at each of the K step counts of ``step_counts`` against the image at the largest
(M metrics, ``benchmarks/perceptual.py``; ``dreamsim`` is a distance, the rest higher-is-better).

**The rule:** the smallest step count whose predicted quality reaches every target (>= for a similarity, <= for a
distance); when none does, the largest. Targets come from the request:

- ``auto``: the bundle's default preset;
- ``auto:NAME``: a preset of the bundle (``presets``: name -> {metric: target}; ``pocketdiff budget-train`` writes
  ``like-S`` presets, calibrated so the mean perceptual similarity on held-out prompts matches a fixed S steps);
- ``auto:METRIC=VALUE[,METRIC=VALUE...]``: explicit targets.

The manifest's ``step_budget`` entry (:class:`BudgetSpec`) carries the step counts, metrics and presets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from pocketdiff.errors import PocketdiffError, choice_error

STEP_BUDGET = "step_budget"
HIDDEN_IN = "encoder_hidden_states"
QUALITY = "quality"
AUTO = "auto"


def is_auto(steps: Any) -> bool:
    """Whether a ``steps`` value asks for the predicted budget (``auto`` or ``auto:...``)."""
    return isinstance(steps, str) and (steps == AUTO or steps.startswith(AUTO + ":"))


@dataclass(frozen=True)
class BudgetSpec:
    """The manifest's ``step_budget`` entry."""

    step_counts: tuple[int, ...]
    metrics: tuple[str, ...]
    higher_is_better: tuple[bool, ...]
    presets: dict[str, dict[str, float]] = field(default_factory=dict)
    default_preset: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping) -> "BudgetSpec":
        try:
            spec = cls(tuple(int(s) for s in d["step_counts"]), tuple(d["metrics"]),
                       tuple(bool(h) for h in d["higher_is_better"]),
                       {k: {m: float(v) for m, v in t.items()} for k, t in d.get("presets", {}).items()},
                       d.get("default_preset"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PocketdiffError(f"bad step_budget entry {dict(d)!r}: {exc}") from None
        return spec.validate()

    def validate(self) -> "BudgetSpec":
        s = list(self.step_counts)
        if len(s) < 1 or s != sorted(set(s)) or s[0] < 1:
            raise PocketdiffError(f"step_budget step_counts must be increasing integers >= 1, got {s}")
        if len(self.metrics) != len(self.higher_is_better) or not self.metrics:
            raise PocketdiffError(f"step_budget: {len(self.metrics)} metrics, {len(self.higher_is_better)} directions")
        for name, targets in self.presets.items():
            self._check_targets(targets, f"preset {name!r}")
        if self.default_preset is not None and self.default_preset not in self.presets:
            raise choice_error("step_budget default preset", self.default_preset, self.presets)
        return self

    def _check_targets(self, targets: Mapping[str, float], what: str) -> None:
        if not targets:
            raise PocketdiffError(f"step budget {what}: no targets")
        for m, v in targets.items():
            if m not in self.metrics:
                raise choice_error(f"step budget metric in {what}", m, self.metrics)
            if not np.isfinite(v):
                raise PocketdiffError(f"step budget {what}: target {m}={v} is not a finite number")

    def to_dict(self) -> dict:
        return {"step_counts": list(self.step_counts), "metrics": list(self.metrics),
                "higher_is_better": list(self.higher_is_better), "presets": self.presets,
                "default_preset": self.default_preset}

    def targets(self, request: str) -> dict[str, float]:
        """The targets ``request`` (``auto``, ``auto:NAME``, ``auto:METRIC=VALUE,...``) names; one error line for a
        bad one."""
        if not is_auto(request):
            raise PocketdiffError(f"steps must be an integer >= 1 or 'auto[:PRESET|METRIC=VALUE,...]', got {request!r}")
        rest = request[len(AUTO) + 1:] if request != AUTO else ""
        if not rest:
            if self.default_preset is None:
                raise PocketdiffError(f"this bundle's step budget has no default preset; name one: auto:NAME "
                                      f"({', '.join(self.presets) or 'none'}) or auto:METRIC=VALUE")
            return dict(self.presets[self.default_preset])
        if "=" not in rest:
            if rest not in self.presets:
                raise choice_error("step budget preset", rest, self.presets)
            return dict(self.presets[rest])
        targets = {}
        for item in rest.split(","):
            name, _, value = item.partition("=")
            try:
                targets[name.strip()] = float(value)
            except ValueError:
                raise PocketdiffError(f"step budget target {item!r} is not METRIC=NUMBER") from None
        self._check_targets(targets, f"request {request!r}")
        return targets

    def choose(self, quality: np.ndarray, targets: Mapping[str, float]):
        """The smallest step count whose predicted ``quality`` [K, M] reaches every target, else the largest (an int);
        for a batch of curves [N, K, M], the N step counts (an array)."""
        k, m = len(self.step_counts), len(self.metrics)
        q = np.asarray(quality, dtype=np.float64)
        batched = q.ndim == 3
        q = q.reshape(-1, k, m)
        ok = np.ones(q.shape[:2], dtype=bool)  # [N, K]
        for name, tau in targets.items():
            j = self.metrics.index(name)
            ok &= q[:, :, j] >= tau if self.higher_is_better[j] else q[:, :, j] <= tau
        steps = np.asarray(self.step_counts)[np.where(ok.any(axis=1), ok.argmax(axis=1), k - 1)]
        return steps if batched else int(steps[0])


def predict_steps(call, spec: BudgetSpec, prompt_hidden: np.ndarray, request: str) -> tuple[int, dict]:
    """Run ``step_budget`` (through the loop's traced ``call``) on the prompt's states [1, 77, D] and apply the
    rule: (steps, the record the result keeps: request, targets, predicted curve, steps)."""
    targets = spec.targets(request)
    quality = call(STEP_BUDGET, {HIDDEN_IN: np.ascontiguousarray(prompt_hidden, dtype=np.float32)})[QUALITY][0]
    steps = spec.choose(quality, targets)
    return steps, {"request": request, "targets": targets, "predicted": np.asarray(quality).tolist(), "steps": steps}
