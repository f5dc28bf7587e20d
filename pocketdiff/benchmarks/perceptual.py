"""Perceptual similarity of an image to a reference image at three levels (BudgetFusion's quality curves).

- pixel: ``psnr`` (dB, torchmetrics; identical images are capped at :data:`PSNR_CAP`) and ``sharpness``, the
  agreement of the two images' Laplacian sharpness (variance of the 3x3 Laplacian of the luma): ``min(r, 1/r)``
  with ``r = sharp(image) / sharp(reference)``, so 1 when equally sharp, lower when blurrier *or* noisier;
- structural: ``ssim`` (torchmetrics, Gaussian window 11, on [0, 1] RGB);
- semantic: ``clip``, the cosine of the toy CLIP's image embeddings, and ``dreamsim``, a DreamSim-like distance:
  DreamSim (arXiv 2306.09344) concatenates the unit-normalised CLS embeddings of several backbones and takes the
  cosine distance; here the backbones are the toy CLIP vision tower's layers (each layer's CLS token, layer-normed
  and unit-normalised) plus its image embedding, so ``1 - mean cosine`` over those.

Every metric but ``dreamsim`` is higher-is-better (:data:`METRICS`: name -> higher is better).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pocketdiff.toyworld.clip import images_to_pixels

METRICS: dict[str, bool] = {"psnr": True, "ssim": True, "sharpness": True, "clip": True, "dreamsim": False}
PSNR_CAP = 60.0  # dB: an image identical to its reference (the largest step count's own row)
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).reshape(1, 1, 3, 3)
_LUMA = torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)


def _unit(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def laplacian_sharpness(images: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of the luma, per image (uint8 [N, H, W, 3] -> [N], on a 0..255 scale)."""
    y = (_unit(images) * _LUMA).sum(1, keepdim=True) * 255.0  # [N, 1, H, W]
    return F.conv2d(y, _LAPLACIAN).flatten(1).var(dim=1, correction=0).numpy()


def sharpness_agreement(sharp: np.ndarray, sharp_ref: np.ndarray) -> np.ndarray:
    """``min(r, 1/r)`` of ``r = sharp / sharp_ref`` (flat images: 1 when both are flat)."""
    eps = 1e-6
    r = (sharp + eps) / (sharp_ref + eps)
    return np.minimum(r, 1.0 / r)


def psnr(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    out = peak_signal_noise_ratio(_unit(images), _unit(reference), data_range=1.0, reduction="none",
                                  dim=(1, 2, 3))
    return np.minimum(out.numpy(), PSNR_CAP)


def ssim(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(_unit(images), _unit(reference), data_range=1.0,
                                               reduction="none").numpy()


@torch.no_grad()
def clip_features(clip, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit image embeddings [N, P], DreamSim-like concatenated unit features [N, (L + 1) * h + P]) of the toy
    CLIP's vision tower."""
    out = clip.vision_model(pixel_values=images_to_pixels(images), output_hidden_states=True)
    norm = clip.vision_model.post_layernorm
    embed = F.normalize(clip.visual_projection(out.pooler_output), dim=-1)
    layers = [F.normalize(norm(h[:, 0]), dim=-1) for h in out.hidden_states[1:]]  # CLS per layer
    return embed, torch.cat([*layers, embed], dim=-1) / np.sqrt(len(layers) + 1)


def similarity_table(clip, images: np.ndarray, reference: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric of :data:`METRICS` for ``images`` against ``reference`` (uint8 [N, H, W, 3] each) -> [N] arrays,
    plus the raw ``sharpness_raw`` of ``images``."""
    sharp, sharp_ref = laplacian_sharpness(images), laplacian_sharpness(reference)
    emb, feats = clip_features(clip, images)
    emb_ref, feats_ref = clip_features(clip, reference)
    return {"psnr": psnr(images, reference), "ssim": ssim(images, reference),
            "sharpness": sharpness_agreement(sharp, sharp_ref),
            "clip": (emb * emb_ref).sum(-1).numpy(), "dreamsim": (1.0 - (feats * feats_ref).sum(-1)).clamp(min=0).numpy(),
            "sharpness_raw": sharp}
