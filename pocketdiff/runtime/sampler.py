"""The reference sampler: tokenize -> text encoder -> initial latents -> N CFG steps -> VAE decode -> uint8.

This is the loop the apps implement. It mirrors diffusers' ``StableDiffusionPipeline.__call__``:

1. ids = tokenizer(prompt) (77 ids); with guidance w > 1 also ids of the negative prompt ("" by default).
2. Text encoder on ``negative`` and ``prompt``, one call each (batch 1, as the apps do), or on
   ``[prompt]`` alone -> ``last_hidden_state``, stacked ``[negative, prompt]``.
3. Latents ``x = rng.initial_latents(seed, (1, C, h, w)) * scheduler.init_noise_sigma``.
4. For each step i with timestep t: ``inp = scheduler.scale_model_input(cat([x, x]) or x, i)``;
   ``eps = unet(inp, t, hidden)``; with CFG ``eps = eps_u + w * (eps_c - eps_u)``;
   ``x = scheduler.step(eps, i, x)``.
5. ``img = vae_decoder(x / scaling_factor)``; ``uint8 = round(clip(img / 2 + 0.5, 0, 1) * 255)``, HWC.

A guidance-embedded UNet (``distill-steps --guidance-embed``; its graph has a ``timestep_cond`` input)
runs one pass per step on ``[prompt]`` alone, fed ``guidance_scale_embedding(w - 1)``, as diffusers'
pipeline does for a UNet with ``time_cond_proj_dim``: no negative prompt, no CFG combination.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.backends import BACKENDS, OnnxSession
from pocketdiff.runtime.rng import initial_latents
from pocketdiff.runtime.schedulers import scheduler_from_config
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer, TokenizerOutput

ProgressCallback = Callable[[int, int], None]  # (steps done, total steps)
ONNX_FILES = {
    "text_encoder": "text_encoder/model.onnx",
    "unet": "unet/model.onnx",
    "vae_decoder": "vae_decoder/model.onnx",
    "unet config": "unet/config.json",
    "vae_decoder config": "vae_decoder/config.json",
    "scheduler config": "scheduler/scheduler_config.json",
    "tokenizer vocab": "tokenizer/vocab.json",
    "tokenizer merges": "tokenizer/merges.txt",
}


def check_generation_args(steps: int, guidance: float) -> None:
    """The user-facing limits shared by every generation path."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise PocketdiffError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(guidance, (int, float)) or not np.isfinite(guidance) or guidance < 0:
        raise PocketdiffError(f"guidance must be a finite number >= 0, got {guidance!r}")


def guidance_scale_embedding(w: float, dim: int) -> np.ndarray:
    """[1, dim] float32: diffusers' ``StableDiffusionPipeline.get_guidance_scale_embedding`` of one ``w``
    (the sampler passes guidance - 1); the torch copy used in training is ``distill.steps``'."""
    half = dim // 2
    freq = np.exp(np.arange(half, dtype=np.float32) * np.float32(-(np.log(10000.0) / (half - 1)))).astype(np.float32)
    emb = np.float32(w * 1000.0) * freq[None, :]
    emb = np.concatenate([np.sin(emb), np.cos(emb)], axis=1).astype(np.float32)
    return np.pad(emb, ((0, 0), (0, 1))) if dim % 2 == 1 else emb


def to_uint8(decoded: np.ndarray) -> np.ndarray:
    """VAE output [1, 3, H, W] in [-1, 1] -> [H, W, 3] uint8, exactly as diffusers post-processes."""
    img = np.clip(decoded[0].astype(np.float32) / 2 + 0.5, 0, 1).transpose(1, 2, 0)
    return (img * 255).round().astype(np.uint8)


@dataclass
class GenerationResult:
    image: np.ndarray  # [H, W, 3] uint8
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    unet_calls: int = 0
    tokens: TokenizerOutput | None = None


class RuntimePipeline:
    """Text-to-image over backend sessions; holds no torch objects."""

    def __init__(self, tokenizer: CLIPBPETokenizer, text_encoder, unet, vae_decoder, scheduler_config: dict,
                 latent_shape: tuple[int, int, int], scaling_factor: float, guidance_embed_dim: int | None = None):
        self.tokenizer = tokenizer
        self.guidance_embed_dim = guidance_embed_dim  # a w-embedded UNet: one pass per step
        self.text_encoder, self.unet, self.vae_decoder = text_encoder, unet, vae_decoder
        self.scheduler_config = scheduler_config
        self.latent_shape = latent_shape
        self.scaling_factor = np.float32(scaling_factor)

    @classmethod
    def from_onnx_dir(cls, path: str | Path, threads: int | None = None) -> "RuntimePipeline":
        """Load an exported ONNX folder (optimum's Stable Diffusion layout)."""
        path = Path(path)
        if not path.is_dir():
            raise PocketdiffError(f"ONNX folder {path} does not exist")
        missing = [f"{what} ({rel})" for what, rel in ONNX_FILES.items() if not (path / rel).is_file()]
        if missing:
            raise PocketdiffError(f"ONNX folder {path} is missing: {', '.join(missing)}")
        unet_cfg = json.loads((path / ONNX_FILES["unet config"]).read_text())
        vae_cfg = json.loads((path / ONNX_FILES["vae_decoder config"]).read_text())
        sched_cfg = json.loads((path / ONNX_FILES["scheduler config"]).read_text())
        scheduler_from_config(sched_cfg)  # validate before loading sessions
        s = unet_cfg["sample_size"]
        return cls(
            CLIPBPETokenizer.from_dir(path / "tokenizer"),
            OnnxSession(path / ONNX_FILES["text_encoder"], threads),
            OnnxSession(path / ONNX_FILES["unet"], threads),
            OnnxSession(path / ONNX_FILES["vae_decoder"], threads),
            sched_cfg, (unet_cfg["in_channels"], s, s), vae_cfg.get("scaling_factor", 0.18215),
            unet_cfg.get("time_cond_proj_dim"),
        )

    @classmethod
    def from_bundle(cls, path: str | Path, backend: str = "onnx", threads: int | None = None) -> "RuntimePipeline":
        """Load an app bundle's components for ``backend``; checksums are verified before any session opens."""
        from pocketdiff.runtime.bundle import load_bundle

        if backend not in BACKENDS:
            raise PocketdiffError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
        bundle = load_bundle(path, verify=True)
        m = bundle.manifest
        components = [bundle.component(role, backend) for role in ("text_encoder", "unet", "vae_decoder")]
        sessions = [BACKENDS[backend](bundle.path / c.path, c, threads) for c in components]
        tok_dir = bundle.path / Path(m["tokenizer"]["vocab"]).parent
        w_dim = next((i["shape"][-1] for i in components[1].inputs if i["name"] == "timestep_cond"), None)
        return cls(CLIPBPETokenizer.from_dir(tok_dir), *sessions, m["scheduler"]["config"],
                   tuple(m["model"]["latent_shape"]), m["model"]["latent_scale_factor"], w_dim)

    def encode(self, ids: list[list[int]]) -> np.ndarray:
        """[n, 77] ids -> [n, 77, D] hidden states, one text-encoder call per prompt."""
        return np.concatenate([self.text_encoder.run({"input_ids": np.asarray([row], dtype=np.int64)})[
            "last_hidden_state"] for row in ids])

    def generate(self, prompt: str, *, steps: int, guidance: float, seed: int, negative_prompt: str = "",
                 scheduler: str | None = None, truncate: bool = False,
                 callback: ProgressCallback | None = None) -> GenerationResult:
        check_generation_args(steps, guidance)
        sched = scheduler_from_config(self.scheduler_config, scheduler)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        tokens = self.tokenizer(prompt, truncate=truncate)
        embedded = self.guidance_embed_dim is not None
        cfg = guidance > 1.0 and not embedded
        fixed = getattr(self.unet, "fixed_batch", None)
        if fixed is not None and fixed != (2 if cfg else 1):
            raise PocketdiffError(
                f"this UNet was exported at fixed batch {fixed} ("
                f"{'guidance > 1, CFG' if fixed == 2 else 'no guidance'}); guidance {guidance} needs batch "
                f"{2 if cfg else 1}: use guidance {'> 1' if fixed == 2 else '<= 1'}, re-export with a matching "
                f"--guidance, or the onnx backend")
        ids = [self.tokenizer(negative_prompt, truncate=True).input_ids, tokens.input_ids] if cfg else [tokens.input_ids]
        t1 = time.perf_counter()
        hidden = self.encode(ids)
        t2 = time.perf_counter()
        sched.set_timesteps(steps)
        x = initial_latents(seed, (1, *self.latent_shape)) * sched.init_noise_sigma
        w = np.float32(guidance)
        extra = {"timestep_cond": guidance_scale_embedding(guidance - 1, self.guidance_embed_dim)} if embedded else {}
        n = len(sched.timesteps)
        for i, t in enumerate(sched.timesteps):
            inp = sched.scale_model_input(np.concatenate([x, x]) if cfg else x, i)
            eps = self.unet.run({"sample": inp, "timestep": np.asarray(t, dtype=np.float32),
                                 "encoder_hidden_states": hidden, **extra})["out_sample"]
            if cfg:
                eps = eps[:1] + w * (eps[1:] - eps[:1])
            x = sched.step(eps, i, x)
            if callback:
                callback(i + 1, n)
        t3 = time.perf_counter()
        decoded = self.vae_decoder.run({"latent_sample": x / self.scaling_factor})["sample"]
        image = to_uint8(decoded)
        t4 = time.perf_counter()
        timings.update(tokenize_s=t1 - t0, text_encoder_s=t2 - t1, unet_s=t3 - t2, decoder_s=t4 - t3, total_s=t4 - t0)
        return GenerationResult(image, timings, unet_calls=n, tokens=tokens)
