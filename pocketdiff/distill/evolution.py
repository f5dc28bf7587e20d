"""Action evaluation for UNet slimming (SnapFusion §3.3): the value of removing or restoring each block.

Quality proxy: the mean squared difference between the elastic UNet's noise prediction (with the
current removals) and the frozen full teacher's, over a fixed probe set of noisy latents at several
timesteps with their text conditions. It is the cheapest signal that moves with every single block
(CLIP score and attribute accuracy need full sampling runs per candidate, tens of seconds each on the
toy teacher; this needs one UNet call per probe batch). The chosen architecture is then checked with
the real metrics (FID, CLIP score, attribute accuracy) in the stage report.

Latency: each block's median from a per-block latency table (``benchmarks/blocks.py``) of the chosen
target, so a phone's table can drive the choice.

Actions:
- ``remove`` (SnapFusion's A-/R-): ``d_quality`` = proxy(removed + {b}) - proxy(removed) >= 0 in
  practice, ``d_latency_ms`` = -latency(b); value = d_quality / latency(b), the quality lost per ms
  saved. Lower is better.
- ``restore`` (A+/R+): ``d_quality`` = proxy(removed - {b}) - proxy(removed) (a gain is negative),
  ``d_latency_ms`` = +latency(b); value = -d_quality / latency(b), the quality regained per ms spent.
  Higher is better.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pocketdiff.errors import PocketdiffError


@dataclass(frozen=True)
class Probe:
    """Fixed UNet inputs and the teacher's outputs on them: lists of [B, C, h, w], [B], [B, 77, D], [B, C, h, w]."""

    samples: list[torch.Tensor]
    timesteps: list[torch.Tensor]
    hidden: list[torch.Tensor]
    teacher_out: list[torch.Tensor]


@torch.no_grad()
def make_probe(teacher_unet, latents: torch.Tensor, hidden: torch.Tensor, noise_sched,
               timesteps=(100, 400, 700, 950), seed: int = 0) -> Probe:
    """Noise ``latents`` [N, C, h, w] (with text states ``hidden`` [N, 77, D]) to each timestep and record
    the teacher's prediction."""
    g = torch.Generator().manual_seed(seed)
    probe = Probe([], [], [], [])
    for t in timesteps:
        tt = torch.full((len(latents),), int(t), dtype=torch.long)
        noisy = noise_sched.add_noise(latents, torch.randn(latents.shape, generator=g), tt)
        probe.samples.append(noisy)
        probe.timesteps.append(tt)
        probe.hidden.append(hidden)
        probe.teacher_out.append(teacher_unet(noisy, tt, hidden).sample)
    return probe


@torch.no_grad()
def quality_proxy(elastic, probe: Probe, removed) -> float:
    """Mean squared difference to the teacher's prediction with ``removed`` blocks skipped."""
    errs = [torch.mean((elastic(x, t, h, skip=sorted(removed)).sample - y) ** 2)
            for x, t, h, y in zip(probe.samples, probe.timesteps, probe.hidden, probe.teacher_out)]
    return float(torch.stack(errs).mean())


@dataclass(frozen=True)
class Action:
    kind: str  # "remove" or "restore"
    block: str
    d_quality: float  # change of the proxy (higher = worse)
    d_latency_ms: float  # change of the estimated latency (negative = faster)

    @property
    def value(self) -> float:
        """remove: quality lost per ms saved (lower is better); restore: quality regained per ms spent
        (higher is better)."""
        cost = abs(self.d_latency_ms) or 1e-9
        return self.d_quality / cost if self.kind == "remove" else -self.d_quality / cost


def evaluate_actions(elastic, probe: Probe, removed, latency_ms) -> tuple[float, list[Action]]:
    """(current proxy, every remove and restore action from the ``removed`` set), each scored.

    ``latency_ms(block)`` gives a block's latency (``LatencyTable.latency_ms``)."""
    removed = set(removed)
    unknown = removed - set(elastic.skippable)
    if unknown:
        raise PocketdiffError(f"cannot evaluate from a removed set with unskippable or unknown block "
                              f"{sorted(unknown)[0]!r}")
    base = quality_proxy(elastic, probe, removed)
    actions = []
    for b in elastic.skippable:
        if b in removed:
            q = quality_proxy(elastic, probe, removed - {b})
            actions.append(Action("restore", b, q - base, latency_ms(b)))
        else:
            q = quality_proxy(elastic, probe, removed | {b})
            actions.append(Action("remove", b, q - base, -latency_ms(b)))
    return base, actions


def best_action(actions: list[Action], kind: str) -> Action | None:
    pool = [a for a in actions if a.kind == kind]
    if not pool:
        return None
    return min(pool, key=lambda a: a.value) if kind == "remove" else max(pool, key=lambda a: a.value)
