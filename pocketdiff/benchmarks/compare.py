"""``pocketdiff bench compare A B [C ...]``: configurations side by side in one process, alternating.

A side is ``pipeline=DIR``, ``bundle=DIR`` or ``arch=NAME[,spec=UNET_SPEC][,resolution=N][,decoder_width=W]``
(a named architecture with random weights, built once and cached; ``decoder_width`` swaps in the
channel-pruned VAE decoder), with optional ``backend=``, ``steps=`` and
``guidance=``, comma-separated::

    pocketdiff bench compare pipeline=build/sd15,steps=50,guidance=7.5 \\
        pipeline=build/sd15,backend=optimum,steps=50,guidance=7.5 \\
        bundle=build/ours,backend=executorch,steps=8,guidance=7.5

Backends (the one registry is :data:`SIDE_BACKENDS`):
- a pipeline folder: ``torch`` is diffusers' ``StableDiffusionPipeline`` loaded eager fp32 with
  ``from_pretrained``, its modules called as the pipeline's ``__call__`` calls them; ``optimum`` is
  optimum's ``ORTStableDiffusionPipeline`` on optimum's own ONNX export of the folder
  (``benchmarks/baselines.py``, exported once and cached);
- a bundle: ``onnx`` or ``executorch`` through pocketdiff's runtime sessions.

Components are compared one at a time (text encoder, UNet step at batch 1 and 2, VAE decoder): each
side loads only that component, the sides' calls alternate (a, b, c, a, b, c, ...), and the
component is freed before the next, so peak memory is one component per side (``pairwise``: one
component of two sides, A and one other, at a time). onnxruntime
sessions (ours and optimum's) are told not to spin after a call, so idle workers do not steal the CPU
from the next side's call. Ratios are each
side's median over side A's. The composed end-to-end latency of a side is
``text + steps x unet_step + decoder`` where a CFG step is one batch-2 UNet call, as the runtime runs
it; when the side's UNet also runs at batch 1, the issue's form
``text + steps x (2 if CFG else 1) x unet(batch 1) + decoder`` is reported beside it.
"""

from __future__ import annotations

import gc
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pocketdiff.errors import PocketdiffError, choice_error

SIDE_BACKENDS = {"pipeline": ("torch", "optimum"), "bundle": ("onnx", "executorch")}
# ``arch=NAME[,spec=FILE][,resolution=N]``: a named architecture with random weights, built once and cached
# (``benchmarks.components.arch_sources``), then run as the pipeline or bundle side of ``backend``
ARCH_BACKENDS = ("onnx", "executorch", "torch", "optimum")
BACKEND_LABELS = {"torch": "diffusers eager fp32", "optimum": "optimum ORT", "onnx": "pocketdiff onnxruntime",
                  "executorch": "pocketdiff ExecuTorch"}
CASES = (("text_encoder", 1), ("unet", 1), ("unet", 2), ("vae_decoder", 1))
KEYS = ("pipeline", "bundle", "arch", "spec", "resolution", "decoder_width", "backend", "steps", "guidance")


@dataclass(frozen=True)
class Side:
    kind: str  # "pipeline" or "bundle"
    path: Path
    backend: str
    steps: int
    guidance: float
    w_embedded: bool | None = None  # a guidance-embedded UNet (one batch-1 pass per step); None: read it from path

    def __post_init__(self):
        if self.w_embedded is None:
            object.__setattr__(self, "w_embedded", guidance_embedded(self.kind, self.path, self.backend))

    @property
    def cfg(self) -> bool:
        """Two UNet passes per step (one batch-2 call): guidance > 1 on a UNet without a w-embedding."""
        return self.guidance > 1.0 and not self.w_embedded

    @property
    def label(self) -> str:
        mode = ", CFG" if self.cfg else ", w-embedded" if self.w_embedded and self.guidance > 1.0 else ""
        return f"{self.path.name}[{BACKEND_LABELS[self.backend]}, {self.steps} steps{mode}]"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "backend": self.backend, "steps": self.steps,
                "guidance": self.guidance, "w_embedded": self.w_embedded, "label": self.label}


def guidance_embedded(kind: str, path: Path, backend: str) -> bool:
    """Whether a pipeline folder's or bundle's UNet takes a guidance-scale embedding (``timestep_cond``).
    Reads the manifest only: the side's sessions verify the bundle's checksums when they load it."""
    if kind == "pipeline":
        from pocketdiff.pipedir import inspect_pipeline

        return bool(inspect_pipeline(path).unet_config.get("time_cond_proj_dim"))
    from pocketdiff.runtime.bundle import load_bundle

    return any(i["name"] == "timestep_cond" for i in load_bundle(path, verify=False).component("unet", backend).inputs)


def parse_side(text: str) -> Side:
    """``pipeline=DIR|bundle=DIR[,backend=..][,steps=N][,guidance=W]`` -> :class:`Side` (validated)."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise PocketdiffError(f"bench compare side {text!r}: expected key=value items, got {part!r}")
        fields[key.strip()] = value.strip()
    kinds = [k for k in (*SIDE_BACKENDS, "arch") if k in fields]
    if len(kinds) != 1:
        raise PocketdiffError(f"bench compare side {text!r}: give exactly one of pipeline=DIR, bundle=DIR or "
                              "arch=NAME")
    unknown = set(fields) - set(KEYS)
    if unknown:
        raise choice_error("bench compare key", sorted(unknown)[0], KEYS)
    if kinds[0] != "arch" and {"spec", "resolution", "decoder_width"} & set(fields):
        raise PocketdiffError(f"bench compare side {text!r}: spec=, resolution= and decoder_width= go with "
                              "arch=NAME only")
    if kinds[0] == "arch":
        fields = _resolve_arch(text, fields)
        kinds = [k for k in SIDE_BACKENDS if k in fields]
    kind = kinds[0]
    backend = fields.get("backend", SIDE_BACKENDS[kind][0])
    if backend not in SIDE_BACKENDS[kind]:
        raise choice_error(f"backend for a {kind}", backend, SIDE_BACKENDS[kind])
    try:
        steps, guidance = int(fields.get("steps", "25")), float(fields.get("guidance", "7.5"))
    except ValueError as exc:
        raise PocketdiffError(f"bench compare side {text!r}: {exc}") from None
    from pocketdiff.runtime.sampler import check_generation_args

    check_generation_args(steps, guidance)
    path = Path(fields[kind])
    if kind == "pipeline":
        from pocketdiff.pipedir import inspect_pipeline

        inspect_pipeline(path)
    else:
        from pocketdiff.runtime.bundle import load_bundle

        load_bundle(path).component("unet", backend)  # the bundle must hold this backend
    return Side(kind, path, backend, steps, guidance)


def _resolve_arch(text: str, fields: dict[str, str]) -> dict[str, str]:
    """An ``arch=`` side's fields with ``pipeline=`` or ``bundle=`` set to the cached build of that
    architecture (built on first use: minutes for SD1.5)."""
    from pocketdiff.benchmarks.components import arch_sources

    backend = fields.get("backend", ARCH_BACKENDS[0])
    if backend not in ARCH_BACKENDS:
        raise choice_error("backend for an arch side", backend, ARCH_BACKENDS)
    try:
        resolution = int(fields["resolution"]) if "resolution" in fields else None
        width = float(fields["decoder_width"]) if "decoder_width" in fields else None
    except ValueError as exc:
        raise PocketdiffError(f"bench compare side {text!r}: {exc}") from None
    source, pipe_dir = arch_sources(fields["arch"], "torch" if backend == "optimum" else backend, resolution,
                                    unet_spec=fields.get("spec"), decoder_width=width)
    rest = {k: v for k, v in fields.items() if k not in ("arch", "spec", "resolution", "decoder_width")}
    kind = "pipeline" if backend in SIDE_BACKENDS["pipeline"] else "bundle"
    return {**rest, "backend": backend, kind: str(pipe_dir if kind == "pipeline" else source)}


def _pipeline_calls(side: Side, role: str, threads: int, optimum_cache: str | Path
                    ) -> dict[int, Callable[[], object]]:
    """batch -> call of one component of a pipeline side (only that component is kept)."""
    import torch

    from pocketdiff.export.components import component_specs
    from pocketdiff.export.parity import fixed_inputs
    from pocketdiff.pipedir import inspect_pipeline

    info = inspect_pipeline(side.path)
    latent = (info.unet_config["in_channels"],) + (info.unet_config["sample_size"],) * 2
    hidden, vocab = info.text_encoder_config["hidden_size"], info.text_encoder_config["vocab_size"]
    batches = [b for r, b in CASES if r == role]
    w_dim = info.unet_config.get("time_cond_proj_dim")
    feeds = {b: fixed_inputs(role, b, latent, hidden, vocab, guidance_embed_dim=w_dim) for b in batches}
    if side.backend == "optimum":
        from pocketdiff.benchmarks.baselines import optimum_component_call

        return {b: optimum_component_call(side.path, role, feeds[b], threads, optimum_cache) for b in batches}
    from pocketdiff.pipedir import load_pipeline

    torch.set_num_threads(threads)
    spec = next(s for s in component_specs(load_pipeline(side.path)) if s.name == role)
    calls = {}
    for b in batches:
        args = [torch.from_numpy(feeds[b][n]) for n in spec.input_names]

        def call(module=spec.module, args=args):
            with torch.no_grad():
                return module(*args)
        calls[b] = call
    return calls


def _bundle_calls(side: Side, role: str, threads: int) -> dict[int, Callable[[], object]]:
    from pocketdiff.export.parity import fixed_inputs
    from pocketdiff.runtime.backends import BACKENDS, OnnxSession
    from pocketdiff.runtime.bundle import load_bundle

    bundle = load_bundle(side.path)
    unet_inputs = {i["name"]: i["shape"] for i in bundle.component("unet", side.backend).inputs}
    hidden = unet_inputs["encoder_hidden_states"][-1]
    w_dim = unet_inputs["timestep_cond"][-1] if "timestep_cond" in unet_inputs else None
    comp = bundle.component(role, side.backend)
    if side.backend == "onnx":  # workers sleep after a call instead of spinning into the next side's call
        session = OnnxSession(bundle.path / comp.path, threads, allow_spinning=False)
    else:
        session = BACKENDS[side.backend](bundle.path / comp.path, comp, threads)
    fixed = comp.inputs[0]["shape"][0]
    calls = {}
    for r, b in CASES:
        if r != role or (isinstance(fixed, int) and fixed != b):
            continue  # an ExecuTorch program runs only at its static batch
        feeds = fixed_inputs(role, b, bundle.manifest["model"]["latent_shape"], hidden, 1000, guidance_embed_dim=w_dim)
        calls[b] = lambda session=session, feeds=feeds: session.run(feeds)
    return calls


def _e2e(side: Side, ms: dict[tuple[str, int], float]) -> dict:
    step_batch = 2 if side.cfg else 1
    out = {"steps": side.steps, "guidance": side.guidance}
    if not {("text_encoder", 1), ("vae_decoder", 1)} <= set(ms):  # a run limited to some components
        return out
    if ("unet", step_batch) in ms:
        out["e2e_ms"] = ms[("text_encoder", 1)] + side.steps * ms[("unet", step_batch)] + ms[("vae_decoder", 1)]
    if ("unet", 1) in ms:
        out["e2e_batch1_formula_ms"] = (ms[("text_encoder", 1)] + side.steps * (2 if side.cfg else 1) * ms[("unet", 1)]
                                        + ms[("vae_decoder", 1)])
    return out


def side_names(n: int) -> list[str]:
    if not 2 <= n <= 26:
        raise PocketdiffError(f"bench compare takes 2 to 26 sides, got {n}")
    return list(string.ascii_uppercase[:n])


def _calls(side: Side, role: str, threads: int, optimum_cache) -> dict[int, Callable[[], object]]:
    if side.kind == "pipeline":
        return _pipeline_calls(side, role, threads, optimum_cache)
    return _bundle_calls(side, role, threads)


def compare(sides: list[Side], threads: int = 2, warmup: int = 3, repeat: int = 10, progress=None,
            optimum_cache: str | Path = "build/bench/optimum", pairwise: bool = False,
            components: tuple[str, ...] | None = None) -> dict:
    """Alternate the sides' calls of each component; ratios are each side's median over side A's.

    ``pairwise``: instead of all sides at once, alternate A with each other side in turn, loading one
    pair at a time (for models too big to hold one copy per side: four SD1.5 UNets ran out of 24 GB).
    Each ratio then comes from its own pair's alternation; A's figures pool its samples over the pairs.
    ``components`` limits the run to those roles (e.g. ``("unet",)``); the end-to-end figure then needs
    the missing ones and is left out.
    """
    from pocketdiff.benchmarks.latency import machine_info, measure_alternating, stats

    names = side_names(len(sides))
    by_name = dict(zip(names, sides))
    groups = [[names[0], n] for n in names[1:]] if pairwise else [names]
    rows, medians = [], {n: {} for n in names}
    roles = list(dict.fromkeys(r for r, _ in CASES))
    if components is not None:
        unknown = sorted(set(components) - set(roles))
        if unknown or not components:
            raise choice_error("component", unknown[0] if unknown else "", roles)
        roles = [r for r in roles if r in components]
    for i, role in enumerate(roles):
        samples: dict[int, dict[str, list[float]]] = {}
        ratios: dict[int, dict[str, float]] = {}
        a_in_group: dict[int, dict[str, float]] = {}
        for group in groups:
            calls = {n: _calls(by_name[n], role, threads, optimum_cache) for n in group}
            for batch in [b for r, b in CASES if r == role]:
                present = {n: calls[n][batch] for n in group if batch in calls[n]}
                timed = measure_alternating(present, warmup, repeat, keep_samples=True)
                for n, (_, raw) in timed.items():
                    samples.setdefault(batch, {}).setdefault(n, []).extend(raw)
                if "A" in timed:
                    a_med = timed["A"][0].median_ms
                    ratios.setdefault(batch, {}).update(
                        {n: round(st.median_ms / a_med, 4) for n, (st, _) in timed.items() if n != "A"})
                    a_in_group.setdefault(batch, {}).update({n: a_med for n in timed if n != "A"})
            del calls
            gc.collect()
        for batch, per_side in samples.items():
            row = {"component": role, "batch": batch}
            for n in names:
                if n in per_side:
                    st = stats(per_side[n], warmup)
                    medians[n][(role, batch)] = st.median_ms
                    row[n] = st.to_dict()
            if ratios.get(batch):
                row["ratio_vs_a"] = ratios[batch]
                if pairwise:  # the A median each ratio was taken against
                    row["a_median_ms_in_pair"] = a_in_group[batch]
            rows.append(row)
        if progress:
            progress(i + 1, len(roles))
    e2e = {n: _e2e(s, medians[n]) for n, s in by_name.items()}
    if "e2e_ms" in e2e["A"]:
        e2e["speedup_vs_a"] = {n: round(e2e["A"]["e2e_ms"] / e2e[n]["e2e_ms"], 3) for n in names[1:]
                               if "e2e_ms" in e2e[n]}
    return {"sides": {n: s.to_dict() for n, s in by_name.items()}, "components": rows, "end_to_end": e2e,
            "alternation": "pairwise with A" if pairwise else "all sides", "threads": threads, "warmup": warmup,
            "repeat": repeat, "machine": machine_info(threads)}
