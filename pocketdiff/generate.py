"""`pocketdiff generate`: one prompt to one image, on the torch/diffusers path or the torch-free runtime.

Both paths take the same :class:`GenerateConfig` and start from the runtime's portable RNG latents,
so the same seed gives the same image (within 2/255 on the tiny pipeline; a test checks this). The
runtime runs a bundle (verified) or a bare ONNX folder in optimum's layout (:func:`runtime_from_onnx_folder`:
file names from the role registry; no checksums).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.export.roles import get_role
from pocketdiff.pipedir import atomic_output_file, inspect_pipeline, load_pipeline
from pocketdiff.runtime.policies import StepPolicy, default_policy_name, is_auto, make_policy
from pocketdiff.runtime.rng import check_seed, initial_latents
from pocketdiff.runtime.sampler import (TEXT_ENCODER, VAE_DECODER, GenerationResult, ProgressCallback,
                                        RuntimePipeline, check_generation_args)
from pocketdiff.runtime.schedulers import get_scheduler_entry, scheduler_from_config, scheduler_name_for
from pocketdiff.runtime.sessions import OnnxSession
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer

log = logging.getLogger(__name__)
# the rest of optimum's Stable Diffusion layout the runtime reads beside the role models
ONNX_FOLDER_FILES = {"unet config": "unet/config.json", "vae_decoder config": "vae_decoder/config.json",
                     "scheduler config": "scheduler/scheduler_config.json", "tokenizer vocab": "tokenizer/vocab.json",
                     "tokenizer merges": "tokenizer/merges.txt"}


def runtime_from_onnx_folder(path: str | Path, threads: int | None = None) -> RuntimePipeline:
    """The runtime on an exported ONNX folder (optimum's Stable Diffusion layout): the UNet's config picks the
    step policy (``default_policy_name``), the role registry names each role's model file. A bare folder
    carries no checksums: nothing is verified (a bundle's manifest is)."""
    path = Path(path)
    if not path.is_dir():
        raise PocketdiffError(f"ONNX folder {path} does not exist")
    missing = [f"{what} ({rel})" for what, rel in ONNX_FOLDER_FILES.items() if not (path / rel).is_file()]
    if missing:
        raise PocketdiffError(f"ONNX folder {path} is missing: {', '.join(missing)}")
    unet_cfg = json.loads((path / ONNX_FOLDER_FILES["unet config"]).read_text())
    vae_cfg = json.loads((path / ONNX_FOLDER_FILES["vae_decoder config"]).read_text())
    sched_cfg = json.loads((path / ONNX_FOLDER_FILES["scheduler config"]).read_text())
    scheduler_from_config(sched_cfg)  # validate before loading sessions
    policy = make_policy(default_policy_name(["timestep_cond"] if unet_cfg.get("time_cond_proj_dim") else []))
    roles = (TEXT_ENCODER, *policy.roles(), VAE_DECODER)
    files = {r: path / get_role(r).onnx_file for r in roles}
    missing = [f"{r} ({f.relative_to(path)})" for r, f in files.items() if not f.is_file()]
    if missing:
        raise PocketdiffError(f"ONNX folder {path} is missing: {', '.join(missing)}")
    s = unet_cfg["sample_size"]
    return RuntimePipeline(CLIPBPETokenizer.from_dir(path / "tokenizer"),
                           {r: OnnxSession(f, threads) for r, f in files.items()}, sched_cfg,
                           (unet_cfg["in_channels"], s, s), vae_cfg.get("scaling_factor", 0.18215), policy)


@dataclass
class GenerateConfig:
    prompt: str
    steps: int | str = 25  # or "auto[:PRESET|METRIC=VALUE,...]": a bundle's step-budget predictor picks per prompt
    guidance: float = 7.5
    seed: int = 0
    scheduler: str | None = None  # a runtime.schedulers.SCHEDULERS name; None: the pipeline's own
    negative_prompt: str = ""
    truncate: bool = False

    def validate(self) -> "GenerateConfig":
        check_generation_args(1 if is_auto(self.steps) else self.steps, self.guidance)
        check_seed(self.seed)
        if self.scheduler is not None:
            get_scheduler_entry(self.scheduler)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _no_auto(cfg: GenerateConfig) -> None:
    if is_auto(cfg.steps):
        raise PocketdiffError(f"steps {cfg.steps!r} runs a bundle's step-budget predictor: use --bundle (the runtime), "
                              "or give --steps N for a pipeline")


def _warn_truncation(tokens) -> None:
    if tokens.truncated:
        log.warning("prompt truncated to 77 tokens (--truncate)")


def generate_runtime(source: str | Path | RuntimePipeline, cfg: GenerateConfig,
                     callback: ProgressCallback | None = None, threads: int | None = None) -> GenerationResult:
    """The torch-free reference runtime on an exported ONNX folder (or an already loaded runtime pipeline)."""
    cfg.validate()
    pipe = source if isinstance(source, RuntimePipeline) else runtime_from_onnx_folder(source, threads=threads)
    pipe.tokenizer(cfg.prompt, truncate=cfg.truncate)  # fail on an over-long prompt before any model runs
    pipe.check_steps(cfg.steps)
    result = pipe.generate(cfg.prompt, steps=cfg.steps, guidance=cfg.guidance, seed=cfg.seed,
                           negative_prompt=cfg.negative_prompt, scheduler=cfg.scheduler, truncate=cfg.truncate,
                           callback=callback)
    _warn_truncation(result.tokens)
    return result


def load_torch_pipeline(pipeline_dir: str | Path, scheduler: str | None = None):
    """Validated diffusers pipeline with the named sampler (default: its own); returns (pipe, info)."""
    import diffusers

    info = inspect_pipeline(pipeline_dir)
    entry = get_scheduler_entry(scheduler or scheduler_name_for(info.scheduler_config))
    pipe = load_pipeline(pipeline_dir)
    pipe.scheduler = getattr(diffusers, entry.diffusers_class).from_config(entry.config_for(dict(pipe.scheduler.config)))
    return pipe, info


def generate_torch(pipeline_dir: str | Path, cfg: GenerateConfig,
                   callback: ProgressCallback | None = None) -> GenerationResult:
    """diffusers' ``StableDiffusionPipeline`` from the runtime's initial latents (no call trace: diffusers runs
    its own loop; ``steps`` counts its denoising steps)."""
    cfg.validate()
    _no_auto(cfg)
    info = inspect_pipeline(pipeline_dir)
    tokens = CLIPBPETokenizer.from_dir(info.tokenizer_dir)(cfg.prompt, truncate=cfg.truncate)

    import torch

    t0 = time.perf_counter()
    pipe, info = load_torch_pipeline(pipeline_dir, cfg.scheduler)
    latents = torch.from_numpy(initial_latents(cfg.seed, (1, *info.latent_shape)))
    t1 = time.perf_counter()
    calls = []

    def on_step(pipeline, i, t, kwargs):
        calls.append(i)
        if callback:
            callback(i + 1, len(pipeline.scheduler.timesteps))
        return kwargs

    with torch.no_grad():
        out = pipe(cfg.prompt, negative_prompt=cfg.negative_prompt or None, num_inference_steps=cfg.steps,
                   guidance_scale=cfg.guidance, latents=latents, output_type="np", callback_on_step_end=on_step)
    image = (out.images[0] * 255).round().astype(np.uint8)
    t2 = time.perf_counter()
    _warn_truncation(tokens)
    return GenerationResult(image, {"load_s": t1 - t0, "generate_s": t2 - t1, "total_s": t2 - t0},
                            steps=len(calls), tokens=tokens)


def check_png_path(out: str | Path) -> Path:
    """Validate an output image path before any work is done."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise PocketdiffError(f"output image must be a .png file, got {out}")
    if out.is_dir():
        raise PocketdiffError(f"output image {out} is a folder")
    return out


def save_png(image: np.ndarray, out: str | Path) -> Path:
    """Write an [H, W, 3] uint8 image atomically."""
    out = check_png_path(out)
    with atomic_output_file(out) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return out


def generate_many(prompts: list[str], cfg: GenerateConfig, pipeline_dir: str | Path | None = None,
                  onnx_dir: str | Path | None = None, batch_size: int = 64,
                  callback: ProgressCallback | None = None, output: str = "image",
                  bundle_dir: str | Path | None = None, backend: str = "onnx", trusted_key=None,
                  policy: StepPolicy | None = None, steps_taken: list[int] | None = None) -> np.ndarray:
    """Images for many prompts; image i starts from the runtime RNG with seed ``cfg.seed + i``.

    The torch path batches prompts through diffusers; the runtime path runs one prompt at a time, as
    a phone would. Returns uint8 [N, H, W, 3], or with ``output="latent"`` (torch path only) the final
    latents float32 [N, C, h, w] as the UNet makes them, to decode with several decoders
    (``images_from_latents``). ``policy`` replaces a bundle's own step policy (e.g. another DDSM width schedule
    over the same bundle's UNets). ``steps_taken`` (runtime path) gets each image's step count appended (with
    ``steps="auto"`` the predictor's choice).
    """
    cfg.validate()
    if policy is not None and bundle_dir is None:
        raise PocketdiffError("a step policy override needs a bundle (bundle_dir)")
    if output not in ("image", "latent"):
        raise choice_error("generate_many output", output, ("image", "latent"))
    if output == "latent" and (onnx_dir or bundle_dir) is not None:
        raise PocketdiffError("output='latent' needs pipeline_dir (the torch path); the runtime returns images only")
    if onnx_dir is not None or bundle_dir is not None:  # a bundle: its manifest's scheduler, on ``backend``
        pipe = (RuntimePipeline.from_bundle(bundle_dir, backend, trusted_key=trusted_key, policy=policy)
                if bundle_dir is not None else runtime_from_onnx_folder(onnx_dir))
        pipe.check_steps(cfg.steps)
        out = []
        for i, p in enumerate(prompts):
            res = pipe.generate(p, steps=cfg.steps, guidance=cfg.guidance, seed=cfg.seed + i,
                                negative_prompt=cfg.negative_prompt, scheduler=cfg.scheduler, truncate=True)
            out.append(res.image)
            if steps_taken is not None:
                steps_taken.append(res.steps)
            if callback:
                callback(i + 1, len(prompts))
        return np.stack(out)

    _no_auto(cfg)
    pipe, info = load_torch_pipeline(pipeline_dir, cfg.scheduler)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        out.append(torch_batch(pipe, info.latent_shape, chunk, cfg, cfg.seed + start, output))
        if callback:
            callback(start + len(chunk), len(prompts))
    return np.concatenate(out)


def torch_batch(pipe, latent_shape, prompts: list[str], cfg: GenerateConfig, first_seed: int,
                output: str = "image") -> np.ndarray:
    """One batch through a loaded diffusers pipeline (:func:`load_torch_pipeline`): image i from the runtime RNG
    with seed ``first_seed + i``; ``cfg``'s steps, guidance and negative prompt (its scheduler is the pipe's).
    uint8 [N, H, W, 3], or the final latents [N, C, h, w] with ``output="latent"``."""
    import torch

    latents = np.concatenate([initial_latents(first_seed + j, (1, *latent_shape)) for j in range(len(prompts))])
    with torch.no_grad():
        res = pipe(prompts, negative_prompt=[cfg.negative_prompt] * len(prompts), num_inference_steps=cfg.steps,
                   guidance_scale=cfg.guidance, latents=torch.from_numpy(latents),
                   output_type="latent" if output == "latent" else "np")
    return res.images.float().numpy() if output == "latent" else (res.images * 255).round().astype(np.uint8)


def images_from_latents(vae, latents: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Decode final latents [N, C, h, w] (``generate_many(..., output="latent")``) with ``vae`` exactly as the
    torch pipeline does (unscale, decode, [-1, 1] -> [0, 1], clamp, round): uint8 [N, H, W, 3]."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(latents), batch_size):
            z = torch.from_numpy(latents[i:i + batch_size]) / vae.config.scaling_factor
            x = (vae.decode(z, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)  # [B, 3, H, W]
            out.append((x.permute(0, 2, 3, 1).float().numpy() * 255).round().astype(np.uint8))
    return np.concatenate(out)
