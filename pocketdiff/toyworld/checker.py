"""Attribute checker: reads back each object's shape, colour, size and position, and the background.

A small CNN with one head per grid cell (the world places objects on a 3x3 grid): presence, shape,
colour and size per cell, plus a global background head. Trained on fresh renders of every
attribute combination (held-out ones included: the checker is the measuring instrument, not the
model under test) with noise, blur and colour-jitter augmentation.

Attribute accuracy of a generated image = every attribute its prompt names is read back correctly
(:func:`score`); per-attribute rates are reported too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from pocketdiff.loop import LoopConfig, train
from pocketdiff.toyworld.world import BACKGROUNDS, COLOURS, IMAGE_SIZE, SHAPES, SIZES, Scene, batch

_COLOURS, _BGS, _SIZES = list(COLOURS), list(BACKGROUNDS), list(SIZES)
N_CELLS = 9


class AttributeChecker(ModelMixin, ConfigMixin):
    """CNN over a [B, 3, 32, 32] image in [-1, 1] -> per-cell logits and background logits."""

    @register_to_config
    def __init__(self, width: int = 32, n_shapes: int = len(SHAPES), n_colours: int = len(COLOURS),
                 n_sizes: int = len(SIZES), n_backgrounds: int = len(BACKGROUNDS)):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(),                   # 32x32
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),      # 16x16
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GELU(),  # 8x8
            nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.GELU(),
        )
        self.n = (1, n_shapes, n_colours, n_sizes)
        self.cell_head = nn.Conv2d(4 * w, sum(self.n), 1)
        self.bg_head = nn.Linear(4 * w, n_backgrounds)

    def forward(self, x):  # [B, 3, 32, 32] -> dict of logits
        f = self.features(x)                                   # [B, 4w, 8, 8]
        cells = self.cell_head(F.adaptive_avg_pool2d(f, 3))    # [B, 17, 3, 3]
        cells = cells.flatten(2).transpose(1, 2)               # [B, 9, 17]
        presence, shape, colour, size = cells.split(self.n, dim=-1)
        return {"presence": presence[..., 0], "shape": shape, "colour": colour, "size": size,
                "background": self.bg_head(f.mean((2, 3)))}


def targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Per-cell labels; -100 marks cells without an object (ignored by cross-entropy)."""
    b = len(scenes)
    t = {k: torch.full((b, N_CELLS), -100, dtype=torch.long) for k in ("shape", "colour", "size")}
    t["presence"] = torch.zeros(b, N_CELLS)
    t["background"] = torch.tensor([_BGS.index(s.background) for s in scenes])
    for i, s in enumerate(scenes):
        for o in s.objects:
            c = o.row * 3 + o.col
            t["presence"][i, c] = 1.0
            t["shape"][i, c], t["colour"][i, c] = SHAPES.index(o.shape), _COLOURS.index(o.colour)
            t["size"][i, c] = _SIZES.index(o.size)
    return t


def loss_terms(out: dict, t: dict) -> dict[str, torch.Tensor]:
    terms = {
        "presence": F.binary_cross_entropy_with_logits(out["presence"], t["presence"]),
        "shape": F.cross_entropy(out["shape"].flatten(0, 1), t["shape"].flatten(), ignore_index=-100),
        "colour": F.cross_entropy(out["colour"].flatten(0, 1), t["colour"].flatten(), ignore_index=-100),
        "size": F.cross_entropy(out["size"].flatten(0, 1), t["size"].flatten(), ignore_index=-100),
        "background": F.cross_entropy(out["background"], t["background"]),
    }
    terms["loss"] = sum(terms.values())
    return terms


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """[B, H, W, 3] uint8 -> [B, 3, 32, 32] float in [-1, 1] (any input size is resized)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[-1] != IMAGE_SIZE:
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Noise, blur and colour jitter on [-1, 1] images, so generated images read like renders."""
    b = x.shape[0]
    gain = 1 + 0.08 * (torch.rand(b, 3, 1, 1, generator=g) * 2 - 1)
    shift = 0.06 * (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1)
    x = (x + 1) * gain - 1 + shift
    k = torch.tensor([0.25, 0.5, 0.25])
    blur = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate").reshape(-1, 1, IMAGE_SIZE + 2, IMAGE_SIZE + 2),
                    (k[:, None] * k[None, :])[None, None]).reshape(x.shape)
    use_blur = (torch.rand(b, 1, 1, 1, generator=g) < 0.3).float()
    x = use_blur * blur + (1 - use_blur) * x
    sigma = 0.1 * torch.rand(b, 1, 1, 1, generator=g)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1.2, 1.2)


@dataclass
class Reading:
    """What the checker sees in one image."""

    presence: np.ndarray   # [9] probabilities
    shape: np.ndarray      # [9] indices
    colour: np.ndarray
    size: np.ndarray
    background: int


@torch.no_grad()
def read(checker: AttributeChecker, images: np.ndarray, batch_size: int = 256) -> list[Reading]:
    out: list[Reading] = []
    checker.eval()
    for i in range(0, len(images), batch_size):
        o = checker(to_tensor(images[i:i + batch_size]))
        p = torch.sigmoid(o["presence"]).numpy()
        sh, co, si = (o[k].argmax(-1).numpy() for k in ("shape", "colour", "size"))
        bg = o["background"].argmax(-1).numpy()
        out.extend(Reading(p[j], sh[j], co[j], si[j], int(bg[j])) for j in range(len(p)))
    return out


def score(scene: Scene, r: Reading) -> dict[str, bool]:
    """Which attributes named by ``scene``'s prompt were read back correctly (plus 'all')."""
    if scene.relation is None:
        o = scene.objects[0]
        c = int(np.argmax(r.presence))
        res = {"shape": SHAPES[r.shape[c]] == o.shape, "colour": _COLOURS[r.colour[c]] == o.colour,
               "size": _SIZES[r.size[c]] == o.size, "position": c == o.row * 3 + o.col,
               "background": _BGS[r.background] == scene.background}
    else:
        cells = [int(c) for c in np.argsort(-r.presence)[:2]]
        best = None
        for a, b in ((cells[0], cells[1]), (cells[1], cells[0])):
            got = [(SHAPES[r.shape[c]], _COLOURS[r.colour[c]]) for c in (a, b)]
            want = [(o.shape, o.colour) for o in scene.objects]
            shape_ok = all(g[0] == w[0] for g, w in zip(got, want))
            colour_ok = all(g[1] == w[1] for g, w in zip(got, want))
            (ra, ca), (rb, cb) = divmod(a, 3), divmod(b, 3)
            rel_ok = {"left of": ca < cb, "right of": ca > cb, "above": ra < rb, "below": ra > rb}[scene.relation]
            cand = {"shape": shape_ok, "colour": colour_ok, "relation": rel_ok}
            if best is None or sum(cand.values()) > sum(best.values()):
                best = cand
        res = best
    res["all"] = all(res.values())
    return res


def summarize(scores: list[dict[str, bool]]) -> dict[str, float]:
    """Mean rate of each attribute over the images that name it."""
    keys = sorted({k for s in scores for k in s})
    return {k: float(np.mean([s[k] for s in scores if k in s])) for k in keys}


@dataclass
class CheckerTrainConfig:
    steps: int = 2500
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32
    pool_size: int = 30000  # renders drawn once, augmented afresh each step
    seed: int = 0


def render_pool(n: int, seed: int):
    """``n`` renders covering every combination: seen (train split) and held-out ones, 30% pairs."""
    n_held = n // 6
    samples = batch(seed, n - n_held, "train") + batch(seed, n_held, "heldout")
    return [s.scene for s in samples], np.stack([s.image for s in samples])


def train_checker(workdir, cfg: CheckerTrainConfig, stop_after: int | None = None, progress: bool = True):
    """Train (or resume) the checker in ``workdir``; returns the model and the loop summary."""
    torch.manual_seed(cfg.seed)
    scenes, images = render_pool(cfg.pool_size, cfg.seed)
    x_all, t_all = to_tensor(images), targets(scenes)
    model = AttributeChecker(width=cfg.width)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.1)

    def batch_fn(step):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=g)
        return augment(x_all[idx], g), {k: v[idx] for k, v in t_all.items()}

    def loss_fn(models, b):
        return loss_terms(models[0](b[0]), b[1])

    summary = train(workdir, [model], opt, batch_fn, loss_fn, LoopConfig(steps=cfg.steps, progress=progress),
                    cfg, name="checker", stop_after=stop_after, lr_scheduler=sched)
    return model, summary
