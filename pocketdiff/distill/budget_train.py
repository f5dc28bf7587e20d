"""``pocketdiff budget-train``: BudgetFusion's step-budget predictor, trained on a ``budget-data`` table.

    pipeline + budget_data.npz -> text encoder states of each prompt -> StepBudgetPredictor (each kind of
    ``kinds``: mlp, seq) -> the better on held-out prompts -> presets calibrated on them -> OUT (the pipeline
    with ``step_budget/``)

**Loss:** per metric m, ``mse_<m>``: the mean squared error of the standardised curve over the K step counts
(the reference row is constant and standardised to 0), weighted by ``w_<m>``; named, weighted and logged by the
shared loop (``loop.py``: resumable, one work folder per kind).

**Held-out:** a ``val_fraction`` of the table's prompts (fixed by ``seed``) is never trained on. On it: each kind's
error per metric (MAE in the metric's units, and R^2), the kind with the lower weighted standardised MSE is kept.

**Presets** (``runtime/policies/budget.py``): for each step count s but the largest, ``like-s`` is the target on
the ``primary`` metric at which the predictor's per-prompt choices reach, on the held-out prompts, at least the
mean quality of a fixed s steps, with the fewest mean steps. ``default_preset`` is ``like-<the pipeline's pinned
steps>`` where that is in S.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pocketdiff.architectures.step_budget import FOLDER, KINDS, StepBudgetPredictor
from pocketdiff.benchmarks.perceptual import METRICS
from pocketdiff.distill.budget_data import load_table
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.loop import LoopConfig, train
from pocketdiff.pinned import pinned_defaults
from pocketdiff.pipedir import (StageRecord, atomic_output_dir, load_pipeline, read_history, start_stage,
                                write_history)
from pocketdiff.runtime.policies.budget import BudgetSpec
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer

log = logging.getLogger(__name__)


@dataclass
class BudgetTrainConfig:
    data: str = ""  # the budget-data table (budget_data.npz, or its folder)
    kinds: tuple[str, ...] = KINDS  # predictor kinds trained and compared on the held-out prompts; the better is kept
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    width: int = 128
    layers: int = 2
    heads: int = 4  # the seq kind's attention heads
    val_fraction: float = 0.1  # prompts held out of training: the comparison, the errors, the presets
    w_psnr: float = 1.0
    w_ssim: float = 1.0
    w_sharpness: float = 1.0
    w_clip: float = 1.0
    w_dreamsim: float = 1.0
    primary: str = "dreamsim"  # the perceptual similarity the like-S presets match
    checkpoint_every: int = 500
    seed: int = 0

    def validate(self) -> "BudgetTrainConfig":
        if not self.data:
            raise PocketdiffError("budget-train needs --data (a budget-data table)")
        for k in self.kinds:
            if k not in KINDS:
                raise choice_error("step-budget predictor kind", k, KINDS)
        if not self.kinds:
            raise PocketdiffError(f"budget-train needs at least one kind; allowed: {', '.join(KINDS)}")
        if not 0 < self.val_fraction < 1:
            raise PocketdiffError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.primary not in METRICS:
            raise choice_error("primary metric", self.primary, METRICS)
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise PocketdiffError(f"budget-train needs steps >= 1, batch_size >= 1, lr > 0; got {self.steps}, "
                                  f"{self.batch_size}, {self.lr}")
        return self

    def weights(self, metrics) -> torch.Tensor:
        return torch.tensor([getattr(self, f"w_{m}") for m in metrics], dtype=torch.float32)


@torch.no_grad()
def prompt_states(pipe, tokenizer_dir: Path, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
    """The text encoder's ``last_hidden_state`` [N, 77, D] of each prompt (the runtime's tokenizer, truncated)."""
    tok = CLIPBPETokenizer.from_dir(tokenizer_dir)
    ids = torch.tensor([tok(p, truncate=True).input_ids for p in prompts])
    return torch.cat([pipe.text_encoder(ids[i:i + batch_size])[0] for i in range(0, len(ids), batch_size)])


def split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices, fixed by ``seed``."""
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    k = max(1, int(round(n * fraction)))
    return np.sort(perm[k:]), np.sort(perm[:k])


def heldout_errors(model: StepBudgetPredictor, hidden: torch.Tensor, curves: torch.Tensor, weights: torch.Tensor
                   ) -> dict:
    """Per metric MAE (its units) and R^2 over the non-reference rows; the weighted standardised MSE."""
    with torch.no_grad():
        pred = model(hidden)
        z = (pred - curves) / model.target_std
    out = {"weighted_std_mse": float(((z ** 2).mean(dim=(0, 1)) * weights).sum() / weights.sum())}
    for j, m in enumerate(model.config.metrics):
        p, t = pred[:, :-1, j], curves[:, :-1, j]
        out[m] = {"mae": float((p - t).abs().mean()),
                  "r2": float(1 - ((p - t) ** 2).sum() / ((t - t.mean(dim=0)) ** 2).sum().clamp(min=1e-12))}
    return out


def calibrate_presets(spec: BudgetSpec, predicted: np.ndarray, curves: np.ndarray, primary: str) -> dict:
    """``like-s`` per step count s < max(S): the target on ``primary`` whose choices match, on these prompts, the mean
    ``primary`` of a fixed s with the fewest mean steps (see the module docstring). -> name -> record."""
    j, hi = spec.metrics.index(primary), spec.higher_is_better[spec.metrics.index(primary)]
    counts = np.array(spec.step_counts)
    candidates = np.unique(np.quantile(predicted[:, :, j], np.linspace(0, 1, 401)))
    rows = np.arange(len(curves))
    table = []
    for tau in candidates:
        pick = spec.choose(predicted, {primary: float(tau)})
        k = np.searchsorted(counts, pick)
        table.append((float(tau), float(pick.mean()), float(curves[rows, k, j].mean())))
    presets = {}
    for k, s in enumerate(counts[:-1]):
        fixed = float(curves[:, k, j].mean())
        ok = [t for t in table if (t[2] >= fixed if hi else t[2] <= fixed)]
        if not ok:
            continue
        tau, mean_steps, quality = min(ok, key=lambda t: (t[1], -t[2] if hi else t[2]))
        presets[f"like-{s}"] = {"target": {primary: tau}, "fixed_steps": int(s), "fixed_quality": fixed,
                                "mean_steps": mean_steps, "quality": quality}
    return presets


def budget_train(pipeline_dir: str | Path, out_dir: str | Path, cfg: BudgetTrainConfig, workdir: str | Path,
                 progress: bool = True, overwrite: bool = False, stop_after: int | None = None) -> Path:
    """Train and compare the predictor kinds; write ``pipeline_dir`` with ``step_budget/`` to ``out_dir``."""
    cfg.validate()
    table = load_table(cfg.data)
    workdir = start_stage(out_dir, workdir, overwrite)
    metrics = tuple(str(m) for m in table["metrics"])
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise PocketdiffError(f"budget data {cfg.data} has metrics this pocketdiff does not know: {unknown}")
    step_counts = tuple(int(s) for s in table["step_counts"])
    pipe = load_pipeline(pipeline_dir)
    hidden = prompt_states(pipe, Path(pipeline_dir) / "tokenizer", [str(p) for p in table["prompt"]])
    curves = torch.from_numpy(table["curves"].astype(np.float32))  # [N, K, M]
    tr, va = split(len(curves), cfg.val_fraction, cfg.seed)
    weights = cfg.weights(metrics)
    kw = dict(hidden_size=hidden.shape[-1], step_counts=step_counts, metrics=metrics,
              higher_is_better=tuple(METRICS[m] for m in metrics), width=cfg.width, layers=cfg.layers, heads=cfg.heads)
    trained, report = {}, {"n_train": len(tr), "n_heldout": len(va), "kinds": {}}
    for kind in cfg.kinds:
        torch.manual_seed(cfg.seed)
        model = StepBudgetPredictor(kind=kind, **kw)
        model.set_target_stats(curves[tr])
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr / 20)

        def batch_fn(step, tr=tr):
            g = np.random.default_rng([cfg.seed, step])
            idx = torch.from_numpy(tr[g.integers(0, len(tr), cfg.batch_size)])
            return hidden[idx], curves[idx]

        def loss_fn(models, b):
            m = models[0]
            z = (m.forward_normalised(b[0]) - (b[1] - m.target_mean) / m.target_std) ** 2  # [B, K, M]
            terms = {f"mse_{name}": z[..., j].mean() for j, name in enumerate(metrics)}
            terms["loss"] = sum(weights[j] * terms[f"mse_{name}"] for j, name in enumerate(metrics)) / weights.sum()
            return terms

        summary = train(workdir / kind, [model], opt, batch_fn, loss_fn,
                        LoopConfig(steps=cfg.steps, checkpoint_every=cfg.checkpoint_every, progress=progress),
                        {**asdict(cfg), "kind": kind}, name=f"budget-{kind}", stop_after=stop_after,
                        lr_scheduler=sched)
        model.eval()
        trained[kind] = model
        report["kinds"][kind] = {"heldout": heldout_errors(model, hidden[va], curves[va], weights),
                                 "params": sum(p.numel() for p in model.parameters()), "train": summary}
        log.info("budget-train %s: held-out weighted standardised MSE %.4f", kind,
                 report["kinds"][kind]["heldout"]["weighted_std_mse"])
    kept = min(trained, key=lambda k: report["kinds"][k]["heldout"]["weighted_std_mse"])
    model = trained[kept]
    spec = BudgetSpec(step_counts, metrics, kw["higher_is_better"])
    with torch.no_grad():
        predicted = model(hidden[va]).numpy()
    calibrated = calibrate_presets(spec, predicted, curves[va].numpy(), cfg.primary)
    pinned = pinned_defaults(pipeline=pipeline_dir).steps
    default = f"like-{pinned}" if f"like-{pinned}" in calibrated else (next(iter(calibrated), None))
    model.register_to_config(presets={k: v["target"] for k, v in calibrated.items()}, default_preset=default)
    report.update(kept=kept, presets=calibrated, default_preset=default, primary=cfg.primary)
    (workdir / "report.json").write_text(json.dumps(report, indent=1))
    meta = table["meta"]
    pins = {"steps": pinned, "guidance": meta["guidance"], "scheduler": meta["scheduler"]}
    history = [*read_history(pipeline_dir), StageRecord("budget-train", {**asdict(cfg), "pins": pins},
                                                        {k: v for k, v in report.items() if k != "kinds"}
                                                        | {"heldout": {k: v["heldout"] for k, v in report["kinds"].items()}})]
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        model.save_pretrained(str(tmp / FOLDER))
        write_history(tmp, history)
    return Path(out_dir)
