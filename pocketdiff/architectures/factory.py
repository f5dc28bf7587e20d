"""Named Stable Diffusion architectures, built with random weights from config.

``sd15`` is the exact SD1.5 component set (UNet, VAE, CLIP ViT-L/14 text encoder, PNDM scheduler
config) for latency, FLOPs, memory, export and parity work, none of which depend on weight values.
``tiny`` uses the same block types at toy width for fast tests. Both use the project-written
tokenizer (``architectures/tokenizer/``), since no CLIP vocabulary can be downloaded here.

``sd15-student`` is the shipped student's architecture at SD1.5 scale: the UNet slimmed by a spec
(``architectures/specs/``: the removed blocks), a guidance embedding (``time_cond_proj_dim``: one batch-1
pass per step instead of CFG's two) and the TAESD-style decoder (``decoder="tiny"``); ``tiny-student``
is the same recipe on ``tiny`` for fast tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pocketdiff.architectures.clockwork_unet import ClockworkUNet2DConditionModel
from pocketdiff.architectures.decoder import tiny_decoder_vae
from pocketdiff.architectures.exit_unet import ExitUNet2DConditionModel
from pocketdiff.architectures.slim_unet import SlimUNet2DConditionModel
from pocketdiff.architectures.slimmable_unet import DDSMUNet2DConditionModel, WidthUNet2DConditionModel
from pocketdiff.architectures.vocab import TOKENIZER_DIR, vocab_size
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.pipedir import read_json
from pocketdiff.runtime.schedulers import get_scheduler_entry, scheduler_name_for

# SD1.5's shipped scheduler config (PNDM/PLMS). DDIM and the others are derived from it by name.
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False, "prediction_type": "epsilon",
}

SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 768, "attention_head_dim": 8,
}

SD15_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 512,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu",
    "norm_num_groups": 32, "scaling_factor": 0.18215,
}

SD15_TEXT = {  # CLIP ViT-L/14 text tower as shipped with SD1.5
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 768,
    "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "attention_dropout": 0.0, "dropout": 0.0,
    "initializer_range": 0.02, "initializer_factor": 1.0, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}


# SD1.5's block layout with three resolution levels instead of four (for 8x8 latents / 32x32 images).
_THREE_LEVEL_UNET = {"down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                     "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], "sample_size": 8}
_THREE_LEVEL_VAE = {"down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
                    "sample_size": 32}


SPECS_DIR = Path(__file__).with_name("specs")
# the image decoders an architecture can have: the VAE's own (KL) decoder, or the TAESD-style tiny one
DECODERS = ("kl", "tiny")


@dataclass(frozen=True)
class Architecture:
    """Configs of one named architecture; :func:`build_pipeline` makes a random-weight diffusers pipeline.

    ``unet_spec`` names a file in ``architectures/specs/`` whose values (e.g. ``removed_blocks``) override
    ``unet``; ``decoder`` is one of :data:`DECODERS` (``tiny``: ``architectures.decoder.tiny_decoder_vae`` of the
    VAE with ``tiny_decoder`` = (channels, blocks per stage))."""

    unet: dict
    vae: dict
    text_encoder: dict
    scheduler: dict = field(default_factory=lambda: dict(SD15_SCHEDULER))
    unet_spec: str | None = None
    decoder: str = "kl"
    tiny_decoder: tuple[int, int] = (64, 3)  # TAESD's decoder: 64 channels, 3 blocks per stage
    steps: int = 25  # the steps its bundles pin (a distilled student's: 8)

    def unet_config(self) -> dict:
        return {**self.unet, **(load_unet_spec(SPECS_DIR / self.unet_spec) if self.unet_spec else {})}

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def image_size(self) -> int:
        return self.unet["sample_size"] * self.vae_scale_factor


ARCHITECTURES: dict[str, Architecture] = {
    "sd15": Architecture(unet=SD15_UNET, vae=SD15_VAE, text_encoder=SD15_TEXT),
    # SD1.5's block layout (cross-attention down x(n-1) + plain down, cross-attention mid, mirrored up,
    # layers_per_block 2) at toy width; 8x8 latents, VAE factor 4 -> 32x32 images.
    "tiny": Architecture(
        unet={**SD15_UNET, **_THREE_LEVEL_UNET, "block_out_channels": [32, 32, 64], "norm_num_groups": 8,
              "cross_attention_dim": 32, "attention_head_dim": 4},
        vae={**SD15_VAE, **_THREE_LEVEL_VAE, "block_out_channels": [16, 32, 32], "layers_per_block": 1,
             "norm_num_groups": 8},
        text_encoder={**SD15_TEXT, "vocab_size": None, "hidden_size": 32, "intermediate_size": 64,
                      "projection_dim": 32, "num_hidden_layers": 2, "num_attention_heads": 4},
    ),
    # The toy teacher (pocketdiff toy train-teacher): SD1.5's layout at toy width for 32x32 images
    # (VAE factor 4 -> 8x8 latents); its text encoder is the toy CLIP's text tower.
    "toy": Architecture(
        unet={**SD15_UNET, **_THREE_LEVEL_UNET, "block_out_channels": [32, 64, 128], "norm_num_groups": 16,
              "cross_attention_dim": 64, "attention_head_dim": 4},
        vae={**SD15_VAE, **_THREE_LEVEL_VAE, "block_out_channels": [32, 64, 64], "layers_per_block": 1,
             "norm_num_groups": 16},
        text_encoder={**SD15_TEXT, "vocab_size": None, "hidden_size": 64, "intermediate_size": 128,
                      "projection_dim": 64, "num_hidden_layers": 3, "num_attention_heads": 4},
    ),
}
# The sampler a step-distilled student runs (``distill/steps.py``): DDIM, v-prediction, trailing timesteps.
STUDENT_SCHEDULER = {**SD15_SCHEDULER, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction",
                     "timestep_spacing": "trailing"}
# The student at SD1.5 scale and its tiny twin: slim UNet + guidance embedding (width 256, as
# ``distill/steps.py``'s default) + TAESD-style decoder + the student's sampler.
ARCHITECTURES["sd15-student"] = Architecture(
    unet={**SD15_UNET, "time_cond_proj_dim": 256}, vae=SD15_VAE, text_encoder=SD15_TEXT,
    scheduler=STUDENT_SCHEDULER, unet_spec="sd15-student.json", decoder="tiny", steps=8)
ARCHITECTURES["tiny-student"] = Architecture(
    unet={**ARCHITECTURES["tiny"].unet, "time_cond_proj_dim": 32}, vae=ARCHITECTURES["tiny"].vae,
    text_encoder=ARCHITECTURES["tiny"].text_encoder, scheduler=STUDENT_SCHEDULER, unet_spec="tiny-student.json",
    decoder="tiny", tiny_decoder=(16, 1), steps=8)


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise choice_error("architecture", name, ARCHITECTURES)
    return ARCHITECTURES[name]


def load_tokenizer(path: str | Path = TOKENIZER_DIR):
    """transformers ``CLIPTokenizer`` over a CLIP-format folder (the project tokenizer by default)."""
    from transformers import CLIPTokenizer

    path = Path(path)
    return CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), pad_token="<|endoftext|>",
                         model_max_length=77)


def text_encoder_config(arch: Architecture) -> dict:
    """The architecture's CLIP text config with the project tokenizer's vocab size filled in."""
    cfg = dict(arch.text_encoder)
    if cfg["vocab_size"] is None:
        cfg["vocab_size"] = vocab_size()
    return cfg


def unet_class(config: dict):
    """The class a UNet config names among pocketdiff's (a Clockwork or DDSM UNet, a width of one), else
    ``SlimUNet2DConditionModel`` for a config that removes blocks, else ``UNet2DConditionModel``."""
    own = {c.__name__: c for c in (ClockworkUNet2DConditionModel, DDSMUNet2DConditionModel, ExitUNet2DConditionModel, WidthUNet2DConditionModel)}
    if config.get("_class_name") in own:
        return own[config["_class_name"]]
    if config.get("removed_blocks") or config.get("_class_name") == "SlimUNet2DConditionModel":
        return SlimUNet2DConditionModel
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel


def unet_config_keys() -> set[str]:
    """The keyword arguments a UNet spec may set: ``UNet2DConditionModel``'s, plus ``removed_blocks``
    (module paths of blocks to remove, which makes a ``SlimUNet2DConditionModel``)."""
    import inspect

    from diffusers import UNet2DConditionModel

    return set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"} | {"removed_blocks"}


def load_unet_spec(path: str | Path) -> dict:
    """A UNet spec file: a JSON object of ``UNet2DConditionModel`` config values that override the
    architecture's, and optionally ``removed_blocks`` (a slim UNet). A whole diffusers
    ``unet/config.json`` works (its ``_``-prefixed keys are ignored). Unknown keys are an error that
    names them."""
    spec = read_json(path)
    if not isinstance(spec, dict):
        raise PocketdiffError(f"UNet spec {path} must be a JSON object of UNet config values, got {type(spec).__name__}")
    spec = {k: v for k, v in spec.items() if not k.startswith("_")}
    unknown = sorted(set(spec) - unet_config_keys())
    if unknown:
        raise PocketdiffError(f"UNet spec {path}: unknown UNet2DConditionModel config key(s) {', '.join(unknown)}")
    return spec


def build_pipeline(name: str, seed: int = 0, resolution: int | None = None, unet_overrides: dict | None = None,
                   decoder: str | None = None):
    """A ``StableDiffusionPipeline`` of architecture ``name`` with seeded random weights (fp32, CPU).

    ``resolution`` (image side in pixels) overrides the architecture's native size; it must be a
    multiple of the VAE factor times the UNet's total downsampling. ``unet_overrides`` (from
    :func:`load_unet_spec`) replaces UNet config values (the architecture's spec's too); ``resolution`` still
    sets the sample size. ``decoder`` (one of :data:`DECODERS`) replaces the architecture's decoder kind."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    arch = get_architecture(name)
    decoder = decoder or arch.decoder
    if decoder not in DECODERS:
        raise choice_error("decoder", decoder, DECODERS)
    text_cfg = text_encoder_config(arch)
    unet_cfg, vae_cfg = {**arch.unet_config(), **(unet_overrides or {})}, dict(arch.vae)
    if resolution is not None:
        step = arch.vae_scale_factor * 2 ** (len(unet_cfg["block_out_channels"]) - 1)
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < step or resolution % step:
            raise PocketdiffError(f"resolution must be a positive multiple of {step} for architecture {name!r}, "
                                  f"got {resolution!r}")
        unet_cfg["sample_size"], vae_cfg["sample_size"] = resolution // arch.vae_scale_factor, resolution
    torch.manual_seed(seed)
    try:
        unet = unet_class(unet_cfg)(**unet_cfg)
    except (ValueError, TypeError, AssertionError) as exc:
        raise PocketdiffError(f"UNet config of {name!r} with overrides {unet_overrides} is invalid: {exc}") from None
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**vae_cfg)
    if decoder == "tiny":
        vae = tiny_decoder_vae(vae, *arch.tiny_decoder)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
    entry = get_scheduler_entry(scheduler_name_for(arch.scheduler))
    scheduler = getattr(diffusers, entry.diffusers_class).from_config(arch.scheduler)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=load_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
