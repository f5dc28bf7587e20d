"""Export the text encoder, UNet and VAE decoder to Core ML ML programs in apple's Swift layout.

The ``coreml/`` folder is what apple/ml-stable-diffusion's Swift ``StableDiffusion`` package loads
(its I/O contract is written down in ``docs/design/coreml_io.md``)::

    coreml/TextEncoder.mlpackage  input_ids[1,77] float32            -> last_hidden_state[1,77,D], pooled_outputs[1,D]
    coreml/Unet.mlpackage         sample[U,C,h,w], timestep[U],
                                  encoder_hidden_states[U,D,1,77]    -> noise_pred[U,C,h,w]
    coreml/VAEDecoder.mlpackage   z[1,C,h,w] = latents / 0.18215     -> image[1,3,H,W] in [-1, 1]
    coreml/vocab.json, coreml/merges.txt

U is 2 (``[unconditional, conditional]``) when the bundle's default guidance uses CFG. Swift
divides latents by its ``decoderScaleFactor`` (0.18215, SD1.5's) before the decoder, so a VAE with
another ``scaling_factor`` gets the ratio folded into the exported decoder. The Swift package loads
compiled ``.mlmodelc`` resources: on macOS run ``xcrun coremlcompiler compile X.mlpackage coreml/``
for each package, as apple's ``--bundle-resources-for-swift-cli`` does.

Prediction needs macOS. Elsewhere the exporter validates each package's spec (input and output
names, shapes, dtypes; op counts; weight bytes) and the manifest says numeric parity was not run.
"""

from __future__ import annotations

import logging
import platform
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pocketdiff import noise
from pocketdiff.errors import PocketdiffError
from pocketdiff.export.components import component_record, component_specs, guidance_embed_dim, tensor_spec
from pocketdiff.export.parity import component_parity, parity_level
from pocketdiff.export.roles import MAX_TOKENS, ROLES, Dims
from pocketdiff.runtime.policies import (CACHE_IN, CACHE_OUT, CW_FULL, CW_LIGHT, EXIT_ROLES, SEG_IN, SEG_ROLES, STEP_BUDGET,
                                         WIDTH_ROLES)

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16")
QUANTIZATIONS = ("int8", "palette6", "palette4")
WEIGHT_OPS = ("conv", "linear", "gather")  # op types whose weights --quantize compresses
SWIFT_DECODER_SCALE = 0.18215  # apple's Swift pipeline divides latents by this before VAEDecoder
PARITY_NOT_RUN = "not run: Core ML prediction needs macOS; the package spec was validated instead"


class TextEncoderCoreML(nn.Module):
    def __init__(self, text_encoder_export: nn.Module):
        super().__init__()
        self.inner = text_encoder_export

    def forward(self, input_ids):  # [1, 77] float32 ids (Swift passes floats) -> [1,77,D], [1,D]
        return self.inner(input_ids.to(torch.int32))


class UnetCoreML(nn.Module):
    def __init__(self, unet_export: nn.Module):
        super().__init__()
        self.inner = unet_export

    def forward(self, sample, timestep, encoder_hidden_states, fourth=None, fifth=None):
        # [U,C,h,w], [U], [U,D,1,77] (, [U,W] for a guidance-embedded UNet; [U,R,s,s] a Clockwork cache, last)
        # -> [U,C,h,w] (, a Clockwork full step's lowres_out)
        hidden = encoder_hidden_states.squeeze(2).transpose(1, 2)  # [U,D,1,77] -> [U,77,D]
        return self.inner(sample, timestep, hidden, *(a for a in (fourth, fifth) if a is not None))


class SegmentCoreML(nn.Module):
    """An AdaDiff segment or exit head with the UNet's Apple-layout text input ([U,D,1,77]) where it takes one."""

    def __init__(self, export: nn.Module, text_at: int | None):
        super().__init__()
        self.inner, self.text_at = export, text_at

    def forward(self, *args):
        if self.text_at is not None:
            args = list(args)
            args[self.text_at] = args[self.text_at].squeeze(2).transpose(1, 2)  # [U,D,1,77] -> [U,77,D]
        return self.inner(*args)


def _segment_io(pipe, specs, u: int) -> dict:
    """AdaDiff's segments and heads: the registry's I/O at batch ``u``, with the UNet's Apple text layout and
    timestep [U]."""
    dims, out = Dims.from_pipe(pipe), {}
    for role in (r for r in specs if r == SEG_IN or r in SEG_ROLES or r in EXIT_ROLES):
        inputs, outputs = ROLES[role].io(dims, u)
        names = [i.name for i in inputs]
        ins = [tensor_spec(i.name, [u] if i.name == "timestep" else [u, dims.hidden_size, 1, MAX_TOKENS]
                           if i.name == "encoder_hidden_states" else list(i.shape), "float32") for i in inputs]
        text_at = names.index("encoder_hidden_states") if "encoder_hidden_states" in names else None
        out[role] = (SegmentCoreML(specs[role].module, text_at), ins,
                     [tensor_spec(o.name, list(o.shape), "float32") for o in outputs])
    return out


def _budget_io(pipe, specs) -> dict:
    """The step-budget predictor, batch 1, in the text encoder's own output layout [1, 77, D]."""
    if STEP_BUDGET not in specs:
        return {}
    inputs, outputs = ROLES[STEP_BUDGET].io(Dims.from_pipe(pipe), 1)
    return {STEP_BUDGET: (specs[STEP_BUDGET].module, [tensor_spec(i.name, list(i.shape), "float32") for i in inputs],
                          [tensor_spec(o.name, list(o.shape), "float32") for o in outputs])}


class VAEDecoderCoreML(nn.Module):
    def __init__(self, decoder_export: nn.Module, scaling_factor: float):
        super().__init__()
        self.inner = decoder_export
        self.ratio = SWIFT_DECODER_SCALE / scaling_factor

    def forward(self, z):  # [1,C,h,w] = latents / 0.18215 -> [1,3,H,W]
        return self.inner(z * self.ratio) if self.ratio != 1.0 else self.inner(z)


def apple_io(pipe, cfg: bool) -> dict[str, tuple[nn.Module, list[dict], list[dict]]]:
    """Per role: the Apple-layout module, its inputs and its outputs (tensor specs, call order)."""
    specs = {s.name: s for s in component_specs(pipe)}
    c, s = pipe.unet.config.in_channels, pipe.unet.config.sample_size
    d, u = pipe.text_encoder.config.hidden_size, 2 if cfg else 1
    factor = pipe.vae.config.scaling_factor
    w_dim = guidance_embed_dim(pipe.unet)  # a guidance-embedded UNet takes its w embedding too
    image = s * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    unet_io = ([tensor_spec("sample", [u, c, s, s], "float32"), tensor_spec("timestep", [u], "float32"),
                tensor_spec("encoder_hidden_states", [u, d, 1, MAX_TOKENS], "float32"),
                *([tensor_spec("timestep_cond", [u, w_dim], "float32")] if w_dim else [])],
               [tensor_spec("noise_pred", [u, c, s, s], "float32")])
    widths = {r: (UnetCoreML(spec.module), *unet_io) for r, spec in specs.items() if r in WIDTH_ROLES}
    if CW_FULL in specs:  # a Clockwork UNet: the cache is an extra output of the full step, an input of the light one
        dims = Dims.from_pipe(pipe)
        cache = [u, dims.cache_channels, dims.cache_size, dims.cache_size]
        widths[CW_FULL] = (UnetCoreML(specs[CW_FULL].module), unet_io[0],
                           [*unet_io[1], tensor_spec(CACHE_OUT, cache, "float32")])
        widths[CW_LIGHT] = (UnetCoreML(specs[CW_LIGHT].module), [*unet_io[0], tensor_spec(CACHE_IN, cache, "float32")],
                            unet_io[1])
    return {
        "text_encoder": (TextEncoderCoreML(specs["text_encoder"].module),
                         [tensor_spec("input_ids", [1, MAX_TOKENS], "float32")],
                         [tensor_spec("last_hidden_state", [1, MAX_TOKENS, d], "float32"),
                          tensor_spec("pooled_outputs", [1, d], "float32")]),
        "unet": (UnetCoreML(specs["unet"].module), *unet_io),
        **widths,  # a DDSM UNet's widths, Clockwork's graphs: the same layout
        **_segment_io(pipe, specs, u),  # AdaDiff's segments and exit heads
        **_budget_io(pipe, specs),  # BudgetFusion's predictor
        "vae_decoder": (VAEDecoderCoreML(specs["vae_decoder"].module, factor),
                        [tensor_spec("z", [1, c, s, s], "float32")],
                        [tensor_spec("image", [1, 3, image, image], "float32")]),
    }


def _unet_like(role: str) -> bool:
    """The UNet and its per-width and Clockwork variants (one I/O layout, plus the Clockwork cache)."""
    return role in ("unet", CW_FULL, CW_LIGHT) or role in WIDTH_ROLES


def _segment(role: str) -> bool:
    return role == SEG_IN or role in SEG_ROLES or role in EXIT_ROLES


def to_apple_feeds(role: str, feeds: dict[str, np.ndarray], scaling_factor: float) -> dict[str, np.ndarray]:
    """Map the common (optimum-named) component inputs to the Apple layout of the same call."""
    if _segment(role):
        b = next(v.shape[0] for k, v in feeds.items() if k != "timestep")
        return {k: (np.full((b,), v, np.float32) if k == "timestep" else v.transpose(0, 2, 1)[:, :, None, :]
                    if k == "encoder_hidden_states" else v) for k, v in feeds.items()}
    if role == "text_encoder":
        return {"input_ids": feeds["input_ids"].astype(np.float32)}
    if role == STEP_BUDGET:
        return dict(feeds)
    if _unet_like(role):
        b = feeds["sample"].shape[0]
        return {"sample": feeds["sample"], "timestep": np.full((b,), feeds["timestep"], np.float32),
                "encoder_hidden_states": feeds["encoder_hidden_states"].transpose(0, 2, 1)[:, :, None, :],
                **{k: feeds[k] for k in ("timestep_cond", CACHE_IN) if k in feeds}}
    return {"z": feeds["latent_sample"] * np.float32(scaling_factor / SWIFT_DECODER_SCALE)}


def from_apple_outputs(role: str, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if _segment(role) or role == STEP_BUDGET:
        return {k: np.asarray(v, np.float32) for k, v in outputs.items()}
    names = {"text_encoder": {"last_hidden_state": "last_hidden_state", "pooled_outputs": "pooler_output"},
             "unet": {"noise_pred": "out_sample", CACHE_OUT: CACHE_OUT}, "vae_decoder": {"image": "sample"}}["unet" if _unet_like(role) else role]
    return {names[k]: np.asarray(v, np.float32) for k, v in outputs.items() if k in names}


def _tensor_type(spec: dict):
    import coremltools as ct

    return ct.TensorType(name=spec["name"], shape=tuple(spec["shape"]), dtype=np.float32)


def convert(module: nn.Module, inputs: list[dict], outputs: list[dict], precision: str, quantization: str | None):
    """Trace ``module`` and convert it to a Core ML ML program (iOS 16+), optionally compressing weights."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    example = tuple(torch.zeros(i["shape"]) for i in inputs)
    with torch.no_grad():
        traced = torch.jit.trace(module.eval(), example, check_trace=False)
    with noise.third_party_bars():  # coremltools draws a bar per MIL pass pipeline (shown with --verbose)
        model = ct.convert(
            traced, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
            inputs=[_tensor_type(i) for i in inputs],
            outputs=[ct.TensorType(name=o["name"], dtype=np.float32) for o in outputs],
            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        )
        if quantization:
            # Only weights of the compute ops: other large constants (the text encoder's causal mask is
            # float32-min, -inf in fp16) must stay exact, and k-means cannot cluster infinities.
            op = (cto.OpLinearQuantizerConfig(mode="linear_symmetric") if quantization == "int8"
                  else cto.OpPalettizerConfig(nbits=int(quantization[-1]), mode="kmeans"))
            config = cto.OptimizationConfig(op_type_configs={t: op for t in WEIGHT_OPS})
            model = (cto.linear_quantize_weights if quantization == "int8" else cto.palettize_weights)(model, config)
    return model


_CT_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32"}  # ArrayFeatureType.ArrayDataType values


def validate_package(path: Path, inputs: list[dict], outputs: list[dict]) -> dict:
    """Check a saved ``.mlpackage``'s spec against the expected I/O; return op counts and weight bytes.

    Raises :class:`PocketdiffError` naming the first mismatch.
    """
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()

    def described(features) -> list[dict]:
        return [tensor_spec(f.name, list(f.type.multiArrayType.shape),
                            _CT_DTYPES.get(f.type.multiArrayType.dataType, str(f.type.multiArrayType.dataType)))
                for f in features]

    for kind, want, got in (("inputs", inputs, described(spec.description.input)),
                            ("outputs", outputs, described(spec.description.output))):
        if got != want:
            raise PocketdiffError(f"Core ML package {path.name}: {kind} are {got}; Apple's Swift pipeline expects {want}")
    ops = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            ops.update(op.type for op in block.operations)
    weights = path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    return {"spec_version": spec.specificationVersion, "ops": sum(ops.values()) - ops["const"],
            "op_counts": dict(ops.most_common()), "weight_bytes": weights.stat().st_size if weights.is_file() else 0}


def export_coreml_target(pipe, info, folder: Path, precision: str, quantization: str | None, cfg: bool,
                         progress=None) -> list[dict]:
    """Write the bundle's ``coreml/`` folder; validate each package; return manifest records."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy2(info.tokenizer_dir / name, folder / name)
    on_mac = platform.system() == "Darwin"
    records = []
    for role, (module, inputs, outputs) in apple_io(pipe, cfg).items():
        if progress:
            progress(f"coreml: {role}")
        log.info("converting %s to Core ML (%s%s)", role, precision, f", {quantization}" if quantization else "")
        model = convert(module, inputs, outputs, precision, quantization)
        resource = ROLES[role].coreml_resource
        path = folder / f"{resource}.mlpackage"
        model.save(str(path))
        meta = {"resource": resource, "minimum_deployment_target": "iOS16",
                "swift_decoder_scale_factor": SWIFT_DECODER_SCALE, **validate_package(path, inputs, outputs)}
        parity = None
        if on_mac:  # prediction is available: the same parity check as every other target
            factor = pipe.vae.config.scaling_factor

            def run(feeds, role=role, model=model, factor=factor):
                return from_apple_outputs(role, model.predict(to_apple_feeds(role, feeds, factor)))

            batch = inputs[0]["shape"][0]
            parity = {f"batch{batch}": component_parity(pipe, role, run, parity_level(precision, quantization), batch)}
        else:
            meta["parity"] = PARITY_NOT_RUN
        records.append(component_record(role, "coreml", f"{folder.name}/{resource}.mlpackage", precision,
                                        quantization, inputs, outputs, parity, meta))
    return records
