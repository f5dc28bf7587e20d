"""BudgetFusion's step-budget predictor: the text encoder's output for a prompt -> its predicted perceptual
quality curve over a set of step counts.

    encoder_hidden_states [B, 77, D] -> quality [B, K, M]   (K step counts, M metrics, in the metrics' own units)

Two kinds, one config (``kind``):

- ``mlp``: LayerNorm of the mean over the 77 token states (the pooled embedding; a causal text tower's padding
  states each summarise the whole prompt) -> ``layers`` x (Linear, GELU) -> Linear to K x M;
- ``seq``: a small sequence model over the token states, as BudgetFusion's predictor reads the prompt:
  Linear D -> width, ``layers`` pre-norm self-attention + MLP blocks, attention pooling with a learned query,
  Linear to K x M.

Attention is written out (linear, bmm, softmax): fixed, export-friendly modules for ONNX, Core ML and ExecuTorch
(``nn.MultiheadAttention``'s fused fast path does not export). The targets are standardised per (step count,
metric) for training; the statistics are buffers, so the exported graph outputs the metrics' own units.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.runtime.policies.budget import BudgetSpec

KINDS = ("mlp", "seq")
FOLDER = "step_budget"  # the predictor's folder inside a pipeline dir


class SelfAttentionBlock(nn.Module):
    """Pre-norm self-attention + MLP, attention as plain matmuls."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise PocketdiffError(f"step-budget predictor: width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(width), nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):  # [B, T, w] -> [B, T, w]
        b, t, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(w // self.heads), dim=-1)  # [B, h, T, T]
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, w))
        return x + self.mlp(self.norm2(x))


class StepBudgetPredictor(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, hidden_size: int = 768, step_counts: tuple[int, ...] = (1, 2, 3, 4, 6, 8),
                 metrics: tuple[str, ...] = ("psnr", "ssim", "sharpness", "clip", "dreamsim"),
                 higher_is_better: tuple[bool, ...] = (True, True, True, True, False), kind: str = "mlp",
                 width: int = 128, layers: int = 2, heads: int = 4, presets: dict | None = None,
                 default_preset: str | None = None):
        super().__init__()
        if kind not in KINDS:
            raise choice_error("step-budget predictor kind", kind, KINDS)
        if len(metrics) != len(higher_is_better):
            raise PocketdiffError(f"step-budget predictor: {len(metrics)} metrics but {len(higher_is_better)} "
                                  "directions")
        k, m = len(step_counts), len(metrics)
        self.register_buffer("target_mean", torch.zeros(k, m))
        self.register_buffer("target_std", torch.ones(k, m))
        if kind == "mlp":
            dims = [hidden_size] + [width] * layers
            body = [nn.LayerNorm(hidden_size)]
            for a, b in zip(dims[:-1], dims[1:]):
                body += [nn.Linear(a, b), nn.GELU()]
            self.body = nn.Sequential(*body)
        else:
            self.inp = nn.Linear(hidden_size, width)
            self.blocks = nn.ModuleList(SelfAttentionBlock(width, heads) for _ in range(layers))
            self.query = nn.Parameter(torch.zeros(1, 1, width))
            self.pool_kv = nn.Linear(width, 2 * width)
            self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, k * m)

    def features(self, hidden):  # [B, 77, D] -> [B, width]
        if self.config.kind == "mlp":
            return self.body(hidden.mean(dim=1))
        x = self.inp(hidden)
        for block in self.blocks:
            x = block(x)
        k, v = self.pool_kv(self.norm(x)).chunk(2, dim=-1)  # [B, T, w] each
        att = torch.softmax(self.query @ k.transpose(-1, -2) / math.sqrt(k.shape[-1]), dim=-1)  # [B, 1, T]
        return (att @ v)[:, 0]

    def forward_normalised(self, hidden):  # [B, 77, D] -> standardised curves [B, K, M]
        k, m = self.target_mean.shape
        return self.head(self.features(hidden)).reshape(-1, k, m)

    def forward(self, hidden):  # [B, 77, D] -> quality [B, K, M] in the metrics' units
        return self.forward_normalised(hidden) * self.target_std + self.target_mean

    def set_target_stats(self, curves: torch.Tensor) -> None:
        """Standardise against training curves [N, K, M] (a constant entry, like the reference row, gets std 1)."""
        std = curves.std(dim=0)
        self.target_mean.copy_(curves.mean(dim=0))
        self.target_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))


def budget_spec(model: StepBudgetPredictor) -> BudgetSpec:
    """The manifest's ``step_budget`` entry for a predictor (its step counts, metrics, directions, presets)."""
    c = model.config
    return BudgetSpec(tuple(int(s) for s in c.step_counts), tuple(c.metrics), tuple(bool(h) for h in c.higher_is_better),
                      {k: dict(v) for k, v in (c.presets or {}).items()}, c.default_preset).validate()


def load_step_budget(pipeline_dir: str | Path) -> StepBudgetPredictor | None:
    """A pipeline folder's predictor (``step_budget/``, written by ``pocketdiff budget-train``), or None."""
    folder = Path(pipeline_dir) / FOLDER
    if not (folder / "config.json").is_file():
        return None
    return StepBudgetPredictor.from_pretrained(str(folder)).eval()


def attach_step_budget(pipe, pipeline_dir: str | Path):
    """``pipe`` with ``pipe.step_budget`` set to the folder's predictor (None without one); the exporters read it."""
    pipe.step_budget = load_step_budget(pipeline_dir)
    return pipe
