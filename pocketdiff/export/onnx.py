"""Export a pipeline's text encoder, UNet and VAE decoder to ONNX in optimum's Stable Diffusion layout.

Layout of the output folder (what ``optimum.onnxruntime.ORTStableDiffusionPipeline`` and the
pocketdiff runtime both read)::

    model_index.json
    text_encoder/model.onnx  config.json     input_ids[B,77] int32 -> last_hidden_state, pooler_output
    unet/model.onnx          config.json     sample[B,C,h,w], timestep[] float32, encoder_hidden_states[B,77,D]
                                             -> out_sample
    vae_decoder/model.onnx   config.json     latent_sample[B,C,h,w] -> sample[B,3,H,W]
    tokenizer/  scheduler/                   copied from the pipeline

The exporter is ``torch.onnx.export(dynamo=True)``; batch is dynamic (1 without guidance, 2 with
CFG). Models over 2 GB keep their weights in one external-data file beside ``model.onnx``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pocketdiff.pipedir import atomic_output_dir, inspect_pipeline, load_pipeline

log = logging.getLogger(__name__)
ONNX_COMPONENTS = ("text_encoder", "unet", "vae_decoder")
EXTERNAL_DATA_BYTES = 2 * 1024**3
MAX_TOKENS = 77


class TextEncoderExport(nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):  # [B, 77] int32 -> [B, 77, D], [B, D]
        out = self.text_encoder(input_ids.to(torch.int64), return_dict=True)
        return out.last_hidden_state, out.pooler_output


class UNetExport(nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):  # [B,C,h,w], [], [B,77,D] -> [B,C,h,w]
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class VaeDecoderExport(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):  # [B,C,h,w] (already divided by scaling_factor) -> [B,3,H,W]
        return self.vae.decode(latent_sample, return_dict=False)[0]


@dataclass(frozen=True)
class ComponentSpec:
    """How to export one component: wrapper, example inputs, names, dynamic batch axes."""

    name: str
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    batch_inputs: tuple[str, ...]  # inputs whose dim 0 is the batch


def component_specs(pipe) -> list[ComponentSpec]:
    """The three SD components with example inputs at batch 2 (dynamo would specialise a batch of 1)."""
    unet_cfg, text_cfg = pipe.unet.config, pipe.text_encoder.config
    s, c = unet_cfg.sample_size, unet_cfg.in_channels
    ids = torch.zeros(2, MAX_TOKENS, dtype=torch.int32)
    latents = torch.zeros(2, c, s, s)
    hidden = torch.zeros(2, MAX_TOKENS, text_cfg.hidden_size)
    return [
        ComponentSpec("text_encoder", TextEncoderExport(pipe.text_encoder), (ids,), ("input_ids",),
                      ("last_hidden_state", "pooler_output"), ("input_ids",)),
        ComponentSpec("unet", UNetExport(pipe.unet), (latents, torch.tensor(500.0), hidden),
                      ("sample", "timestep", "encoder_hidden_states"), ("out_sample",),
                      ("sample", "encoder_hidden_states")),
        ComponentSpec("vae_decoder", VaeDecoderExport(pipe.vae), (latents,), ("latent_sample",), ("sample",),
                      ("latent_sample",)),
    ]


def export_component(spec: ComponentSpec, out_dir: Path) -> Path:
    """Export one component to ``out_dir/<name>/model.onnx``; returns the path."""
    target = out_dir / spec.name
    target.mkdir(parents=True, exist_ok=True)
    path = target / "model.onnx"
    batch = torch.export.Dim("batch_size", min=1, max=64)
    dynamic = tuple({0: batch} if n in spec.batch_inputs else {} for n in spec.input_names)
    spec.module.eval()
    with torch.no_grad():
        program = torch.onnx.export(
            spec.module, spec.example, input_names=list(spec.input_names), output_names=list(spec.output_names),
            dynamic_shapes=dynamic, dynamo=True, verbose=False,
        )
    n_bytes = sum(p.numel() * p.element_size() for p in spec.module.parameters())
    program.save(str(path), external_data=n_bytes > EXTERNAL_DATA_BYTES)
    return path


def _write_configs(pipe, info, out_dir: Path) -> None:
    (out_dir / "unet" / "config.json").write_text(json.dumps(dict(pipe.unet.config), indent=2, default=list))
    (out_dir / "vae_decoder" / "config.json").write_text(json.dumps(dict(pipe.vae.config), indent=2, default=list))
    pipe.text_encoder.config.to_json_file(str(out_dir / "text_encoder" / "config.json"))
    shutil.copytree(info.path / "tokenizer", out_dir / "tokenizer")
    shutil.copytree(info.path / "scheduler", out_dir / "scheduler")
    index = {
        "_class_name": "ORTStableDiffusionPipeline",
        "text_encoder": ["optimum", "ORTTextEncoder"],
        "unet": ["optimum", "ORTUnet"],
        "vae_decoder": ["optimum", "ORTVaeDecoder"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", info.scheduler_config["_class_name"]],
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
    }
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2))


def export_onnx_into(pipe, info, target: Path) -> Path:
    """Write the ONNX folder (layout in the module docstring) into an existing, empty ``target``."""
    for spec in component_specs(pipe):
        log.info("exporting %s to ONNX", spec.name)
        export_component(spec, target)
    _write_configs(pipe, info, target)
    return target


def export_onnx(pipeline_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Export a pipeline folder to an ONNX folder, atomically."""
    info = inspect_pipeline(pipeline_dir)
    pipe = load_pipeline(pipeline_dir)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        export_onnx_into(pipe, info, tmp)
    return Path(out_dir)


def torch_reference(pipe, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one component in PyTorch on numpy inputs named as in the ONNX graph (for parity checks)."""
    spec = next(s for s in component_specs(pipe) if s.name == name)
    args = [torch.from_numpy(np.asarray(inputs[n])) for n in spec.input_names]
    with torch.no_grad():
        out = spec.module(*args)
    out = out if isinstance(out, tuple) else (out,)
    return {n: o.numpy() for n, o in zip(spec.output_names, out)}
