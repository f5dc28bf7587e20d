"""The one registry of component roles: every exported component has a role, and everything that
handles components reads its facts from here (the exporters, parity, the ONNX-folder loader, bench and
the bundle writer).

A role carries:

- its I/O spec: tensor names, shapes in symbols (``B`` batch, ``C``/``h`` latent channels and size, ``T``
  77 tokens, ``D`` text width, ``H`` image size, ``W`` the guidance-embedding width, ``R``/``s`` a Clockwork
  UNet's cached low-resolution feature channels and size, the AdaDiff segments' level symbols ``cL``/``zL``/``kL``/
  ``E``/``cN``/``zN`` (``architectures/unet_levels.py``), ``K``/``M`` a step-budget predictor's step counts and
  metrics; a port that needs a symbol exists only when the model
  has it), dtypes, and how its fixed inputs are drawn;
- its ONNX folder in optimum's layout (``<folder>/model.onnx``), its Core ML resource name (apple's Swift
  package), its ExecuTorch file;
- whether it runs inside the denoising loop (``per_step``: static-shape targets then export it at the
  step policy's batch, 2 for two-pass CFG);
- its bench cases (the batches ``bench`` and ``bench compare`` time it at).

Later methods add their roles here (an adaptor, exit heads, a step-budget predictor, a UNet per width)
and their torch wrappers in ``export/components.py``. This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pocketdiff.architectures.unet_levels import segment_symbols
from pocketdiff.errors import choice_error
from pocketdiff.runtime.policies import (CACHE_IN, CACHE_OUT, CW_FULL, CW_LIGHT, SEG_IN, WIDTH_ROLES, exit_role,
                                         guidance_scale_embedding, seg_role)
from pocketdiff.runtime.policies.adadiff import HIDDEN, HIDDEN_OUT, MAX_LEVELS, TEMB, UNCERTAINTY, skips_name
from pocketdiff.runtime.policies.budget import HIDDEN_IN, QUALITY, STEP_BUDGET
from pocketdiff.runtime.sessions import TensorSpec

MAX_TOKENS = 77
PARITY_GUIDANCE = 7.5  # the w a guidance-embedded UNet's fixed inputs embed
FILLS = ("ids", "normal", "timestep", "w_embedding", "zeros")


@dataclass(frozen=True)
class Port:
    """One input or output of a role: shape in symbols, dtype, how fixed inputs fill it, and the symbol it
    needs to exist at all (``W``: only a guidance-embedded model has it)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    fill: str = "normal"
    needs: str | None = None


@dataclass(frozen=True)
class Dims:
    """The numbers a pipeline's or bundle's shapes resolve to."""

    latent_channels: int
    latent_size: int
    hidden_size: int
    vocab_size: int
    image_size: int
    guidance_embed_dim: int | None = None
    cache_channels: int | None = None  # a Clockwork UNet's lowres_out [B, R, s, s]
    cache_size: int | None = None
    segments: tuple[tuple[str, int], ...] = ()  # an AdaDiff UNet's segment symbols (unet_levels.segment_symbols)
    budget: tuple[int, int] | None = None  # a step-budget predictor's (K step counts, M metrics)

    def symbol(self, s: str) -> int | None:
        base = {"C": self.latent_channels, "h": self.latent_size, "D": self.hidden_size, "H": self.image_size,
                "W": self.guidance_embed_dim, "T": MAX_TOKENS, "R": self.cache_channels, "s": self.cache_size,
                "K": self.budget[0] if self.budget else None, "M": self.budget[1] if self.budget else None}
        return base[s] if s in base else dict(self.segments).get(s)

    @classmethod
    def from_configs(cls, unet_config: dict, text_encoder_config: dict, vae_config: dict,
                     budget: tuple[int, int] | None = None) -> "Dims":
        s, r = unet_config["sample_size"], unet_config.get("clockwork_boundary")
        cache = (unet_config["block_out_channels"][r], s // 2 ** (r - 1)) if r else (None, None)
        segments = tuple(segment_symbols(unet_config).items()) if unet_config.get("adadiff_exits") else ()
        return cls(unet_config["in_channels"], s, text_encoder_config["hidden_size"],
                   text_encoder_config["vocab_size"], s * 2 ** (len(vae_config["block_out_channels"]) - 1),
                   unet_config.get("time_cond_proj_dim"), *cache, segments, budget)

    @classmethod
    def from_pipe(cls, pipe) -> "Dims":
        """Of a loaded diffusers pipeline (its models' configs; a step-budget predictor's, when attached)."""
        sb = getattr(pipe, "step_budget", None)
        budget = (len(sb.config.step_counts), len(sb.config.metrics)) if sb is not None else None
        return cls.from_configs(dict(pipe.unet.config), pipe.text_encoder.config.to_dict(), dict(pipe.vae.config),
                                budget)

    @classmethod
    def from_bundle(cls, bundle, target: str) -> "Dims":
        """Of a loaded bundle (``runtime.bundle.Bundle``): the manifest's model shapes, the UNet's declared
        inputs, the tokenizer's vocabulary."""
        m = bundle.manifest
        c, s, _ = m["model"]["latent_shape"]
        unet = {i["name"]: i["shape"] for i in bundle.component("unet", target).inputs}
        hidden = unet["encoder_hidden_states"]
        vocab = len(bundle.tokenizer().encoder)
        w = unet.get("timestep_cond", [None])[-1]
        d = hidden[1] if len(hidden) == 4 else hidden[-1]  # Core ML's apple layout is [B, D, 1, 77]
        cache = (None, None)
        if any(c.role == CW_FULL and c.target == target for c in bundle.components):
            out = {o["name"]: o["shape"] for o in bundle.component(CW_FULL, target).outputs}[CACHE_OUT]
            cache = (out[1], out[-1])
        sb = m.get("step_budget")
        budget = (len(sb["step_counts"]), len(sb["metrics"])) if sb else None
        return cls(c, s, d, vocab, m["model"]["image_size"][0], w, *cache, _bound_segment_symbols(bundle, target),
                   budget)


@dataclass(frozen=True)
class Role:
    name: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    onnx_folder: str
    coreml_resource: str
    per_step: bool = False
    bench_batches: tuple[int, ...] = (1,)
    optional: bool = False  # only some pipelines have it (a DDSM UNet's widths): never benched or exported unasked

    @property
    def onnx_file(self) -> str:
        return f"{self.onnx_folder}/model.onnx"

    @property
    def executorch_file(self) -> str:
        return f"{self.name}.pte"

    @staticmethod
    def _present(ports, dims: Dims) -> list[Port]:
        return [p for p in ports if p.needs is None or dims.symbol(p.needs) is not None]

    def _specs(self, ports, dims: Dims, batch) -> list[TensorSpec]:
        return [TensorSpec(p.name, tuple(batch if d == "B" else dims.symbol(d) if isinstance(d, str) else d
                                         for d in p.shape), p.dtype) for p in self._present(ports, dims)]

    def io(self, dims: Dims, batch: int | str = "batch_size") -> tuple[list[TensorSpec], list[TensorSpec]]:
        """(inputs, outputs) at ``dims``; ``batch`` a number, or a symbol for a dynamic batch."""
        return self._specs(self.inputs, dims, batch), self._specs(self.outputs, dims, batch)

    def batch_inputs(self) -> tuple[str, ...]:
        """Inputs whose leading dim is the batch."""
        return tuple(p.name for p in self.inputs if p.shape[:1] == ("B",))

    def fixed_inputs(self, dims: Dims, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """The fixed inputs every parity check and benchmark feeds this role (numpy only): random ids,
        Gaussian tensors, timestep 500, the w embedding of guidance 7.5; drawn in input order from one
        seeded generator."""
        rng = np.random.default_rng(seed)
        out = {}
        for spec, port in zip(self.io(dims, batch)[0], self._present(self.inputs, dims)):
            if port.fill == "ids":
                out[spec.name] = rng.integers(0, dims.vocab_size, spec.shape).astype(spec.dtype)
            elif port.fill == "normal":
                out[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
            elif port.fill == "timestep":
                out[spec.name] = np.array(500.0, spec.dtype)
            elif port.fill == "w_embedding":
                out[spec.name] = np.repeat(guidance_scale_embedding(PARITY_GUIDANCE - 1, spec.shape[-1]), batch, 0)
            else:
                out[spec.name] = np.zeros(spec.shape, spec.dtype)
        return out


def _bound_segment_symbols(bundle, target: str) -> tuple[tuple[str, int], ...]:
    """The AdaDiff symbols a bundle's segment and exit components bind (their manifest shapes against the ports)."""
    bound = {}
    for comp in bundle.components:
        if comp.target != target or comp.role not in ROLES or not comp.role.startswith(("unet_seg", "unet_exit")):
            continue
        declared = {t["name"]: t["shape"] for t in [*comp.inputs, *comp.outputs]}
        for port in ROLES[comp.role].inputs + ROLES[comp.role].outputs:
            shape = declared.get(port.name)
            if shape is not None and len(shape) == len(port.shape):
                bound.update({d: v for d, v in zip(port.shape, shape) if isinstance(d, str) and d[0] in "ckzEN"
                              and isinstance(v, int) and d not in ("B", "C", "D", "T", "h", "H", "W")})
    return tuple(sorted(bound.items()))


ROLES: dict[str, Role] = {}


def register_role(role: Role) -> Role:
    for p in role.inputs + role.outputs:
        if p.fill not in FILLS:
            raise choice_error(f"fill of {role.name}.{p.name}", p.fill, FILLS)
    ROLES[role.name] = role
    return role


register_role(Role(
    "text_encoder",
    inputs=(Port("input_ids", ("B", "T"), "int32", fill="ids"),),
    outputs=(Port("last_hidden_state", ("B", "T", "D")), Port("pooler_output", ("B", "D"))),
    onnx_folder="text_encoder", coreml_resource="TextEncoder"))
register_role(Role(
    "unet",
    inputs=(Port("sample", ("B", "C", "h", "h")), Port("timestep", (), fill="timestep"),
            Port("encoder_hidden_states", ("B", "T", "D")),
            Port("timestep_cond", ("B", "W"), fill="w_embedding", needs="W")),
    outputs=(Port("out_sample", ("B", "C", "h", "h")),),
    onnx_folder="unet", coreml_resource="Unet", per_step=True, bench_batches=(1, 2)))
for _name in WIDTH_ROLES:  # DDSM: the UNet at a width k/8 (runtime/policies/ddsm.py names them), same I/O
    register_role(Role(_name, inputs=ROLES["unet"].inputs, outputs=ROLES["unet"].outputs, onnx_folder=_name,
                       coreml_resource=f"Unet{_name.removeprefix('unet')}", per_step=True, bench_batches=(1, 2),
                       optional=True))
_CACHE = Port(CACHE_OUT, ("B", "R", "s", "s"), needs="R")  # Clockwork: lowres_out of the last full step
register_role(Role(CW_FULL, inputs=ROLES["unet"].inputs, outputs=(*ROLES["unet"].outputs, _CACHE),
                   onnx_folder=CW_FULL, coreml_resource="UnetClockworkFull", per_step=True, bench_batches=(1, 2),
                   optional=True))
register_role(Role(CW_LIGHT, inputs=(*ROLES["unet"].inputs, Port(CACHE_IN, _CACHE.shape, needs="R")),
                   outputs=ROLES["unet"].outputs, onnx_folder=CW_LIGHT, coreml_resource="UnetClockworkLight",
                   per_step=True, bench_batches=(1, 2), optional=True))
# AdaDiff (architectures/exit_unet.py): the UNet cut at every up-block level, and an exit head per level.
_TEMB, _TEXT = Port(TEMB, ("B", "E")), ROLES["unet"].inputs[2]
register_role(Role(SEG_IN, inputs=ROLES["unet"].inputs, outputs=(
    Port(HIDDEN, ("B", "cN", "zN", "zN")), _TEMB,
    *(Port(skips_name(lv), ("B", f"k{lv}", f"z{lv}", f"z{lv}"), needs=f"k{lv}") for lv in range(MAX_LEVELS - 1))),
    onnx_folder=SEG_IN, coreml_resource="UnetSegIn", per_step=True, bench_batches=(1, 2), optional=True))
for _lv in range(MAX_LEVELS - 1):
    register_role(Role(seg_role(_lv), inputs=(
        Port(HIDDEN, ("B", f"c{_lv + 1}", f"z{_lv}", f"z{_lv}")),
        Port(skips_name(_lv), ("B", f"k{_lv}", f"z{_lv}", f"z{_lv}")), _TEMB, _TEXT),
        outputs=(Port(HIDDEN_OUT, ("B", f"c{_lv}", f"z{_lv - 1}", f"z{_lv - 1}")),) if _lv else ROLES["unet"].outputs,
        onnx_folder=seg_role(_lv), coreml_resource=f"UnetSegL{_lv}", per_step=True, bench_batches=(1, 2), optional=True))
for _lv in range(1, MAX_LEVELS):
    register_role(Role(exit_role(_lv), inputs=(
        Port(HIDDEN, ("B", f"c{_lv}", f"z{_lv - 1}", f"z{_lv - 1}")), Port(skips_name(0), ("B", "k0", "h", "h")), _TEMB),
        outputs=(*ROLES["unet"].outputs, Port(UNCERTAINTY, ("B",))), onnx_folder=exit_role(_lv),
        coreml_resource=f"UnetExitL{_lv}", per_step=True, bench_batches=(1, 2), optional=True))
# BudgetFusion (architectures/step_budget.py): the prompt's states -> predicted quality per step count and metric
register_role(Role(STEP_BUDGET, inputs=(Port(HIDDEN_IN, ("B", "T", "D")),), outputs=(Port(QUALITY, ("B", "K", "M")),),
                   onnx_folder=STEP_BUDGET, coreml_resource="StepBudget", optional=True))
register_role(Role(
    "vae_decoder",
    inputs=(Port("latent_sample", ("B", "C", "h", "h")),),
    outputs=(Port("sample", ("B", 3, "H", "H")),),
    onnx_folder="vae_decoder", coreml_resource="VAEDecoder"))


def get_role(name: str) -> Role:
    if name not in ROLES:
        raise choice_error("component role", name, ROLES)
    return ROLES[name]


def bench_cases(roles=None) -> list[tuple[str, int]]:
    """(role, batch) pairs ``bench`` times, in registry order (every role every pipeline has, or those named)."""
    return [(r.name, b) for r in ROLES.values() if (roles is None and not r.optional) or (roles is not None and r.name in roles)
            for b in r.bench_batches]
