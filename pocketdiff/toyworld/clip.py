"""Toy CLIP: a transformers ``CLIPModel`` at small width, trained contrastively on the toy world.

As CLIP ViT-L/14's text tower is SD1.5's frozen text encoder, this model's text tower is the toy
teacher's frozen text encoder (:func:`text_encoder_from_clip`). Its two towers give the CLIP score
(100 x cosine, clipped at 0) and its image tower, pooled to 32x32 first so any input size works,
gives the FID features (:class:`ClipImageFeatures`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pocketdiff.architectures.factory import get_architecture, text_encoder_config
from pocketdiff.architectures.vocab import TOKENIZER_DIR
from pocketdiff.loop import LoopConfig, train
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer
from pocketdiff.toyworld.world import IMAGE_SIZE, batch


@dataclass
class ClipTrainConfig:
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    pool_size: int = 40000
    seed: int = 0


def clip_config():
    """CLIPConfig whose text tower is exactly the toy architecture's text encoder."""
    from transformers import CLIPConfig

    text = text_encoder_config(get_architecture("toy"))
    h = text["hidden_size"]
    vision = dict(image_size=IMAGE_SIZE, patch_size=4, hidden_size=h, intermediate_size=2 * h,
                  projection_dim=text["projection_dim"], num_hidden_layers=text["num_hidden_layers"],
                  num_attention_heads=text["num_attention_heads"], num_channels=3, hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=text["projection_dim"])


def images_to_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] uint8 (numpy) or [B, 3, H, W] uint8/float tensor -> [B, 3, 32, 32] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2) if isinstance(images, np.ndarray) else images
    x = x.float() / 127.5 - 1 if not torch.is_floating_point(x) or x.max() > 1.5 else x.float() * 2 - 1
    if x.shape[-1] != IMAGE_SIZE or x.shape[-2] != IMAGE_SIZE:
        x = F.adaptive_avg_pool2d(x, IMAGE_SIZE)
    return x


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    return torch.tensor([tokenizer(t, truncate=True).input_ids for t in texts])


class ClipImageFeatures(nn.Module):
    """FID feature extractor for torchmetrics: uint8 [B, 3, H, W] at any size -> [B, D] image embeds."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip.eval()
        self.num_features = clip.config.projection_dim

    @torch.no_grad()
    def forward(self, x):
        return self.clip.get_image_features(pixel_values=images_to_pixels(x))


@torch.no_grad()
def clip_score(clip, tokenizer, images: np.ndarray, prompts: list[str], batch_size: int = 256) -> np.ndarray:
    """Per-image CLIP score: 100 x cos(text, image) clipped at 0."""
    out = []
    for i in range(0, len(prompts), batch_size):
        img = clip.get_image_features(pixel_values=images_to_pixels(images[i:i + batch_size]))
        txt = clip.get_text_features(input_ids=tokenize(tokenizer, prompts[i:i + batch_size]))
        out.append((100 * F.cosine_similarity(img, txt)).clamp(min=0).numpy())
    return np.concatenate(out)


def text_encoder_from_clip(clip):
    """The CLIP text tower as a standalone ``CLIPTextModel`` (the teacher's frozen text encoder)."""
    from transformers import CLIPTextModel

    te = CLIPTextModel(clip.config.text_config)
    te.text_model.load_state_dict(clip.text_model.state_dict(), strict=True)
    return te.eval()


def train_clip(workdir, cfg: ClipTrainConfig, stop_after: int | None = None, progress: bool = True):
    """Contrastive training on renders + captions of the ``train`` split only: the text tower feeds the
    teacher, so held-out combinations stay unseen by everything the teacher is built from."""
    from transformers import CLIPModel

    torch.manual_seed(cfg.seed)
    tok = CLIPBPETokenizer.from_dir(TOKENIZER_DIR)
    pool = batch(cfg.seed + 7, cfg.pool_size, "train")
    pixels = images_to_pixels(np.stack([s.image for s in pool]))
    ids = tokenize(tok, [s.caption for s in pool])
    model = CLIPModel(clip_config())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.1)

    def batch_fn(step):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, len(pool), (cfg.batch_size,), generator=g)
        return pixels[idx], ids[idx]

    def loss_fn(models, b):
        out = models[0](input_ids=b[1], pixel_values=b[0], return_loss=True)
        return {"loss": out.loss, "logit_scale": models[0].logit_scale.detach().exp()}

    summary = train(workdir, [model], opt, batch_fn, loss_fn, LoopConfig(steps=cfg.steps, progress=progress),
                    cfg, name="clip", stop_after=stop_after, lr_scheduler=sched)
    return model.eval(), summary
