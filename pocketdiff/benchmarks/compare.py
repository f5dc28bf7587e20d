"""``pocketdiff bench compare A B [C ...]``: configurations side by side in one process, alternating.

A side is ``pipeline=DIR``, ``bundle=DIR`` or
``arch=NAME[,spec=UNET_SPEC][,resolution=N][,decoder=kl|tiny][,decoder_width=W]`` (a named architecture with
random weights, built once and cached; ``decoder`` replaces its decoder kind, ``decoder_width`` swaps in the
channel-pruned VAE decoder), with optional ``backend=``, ``steps=``, ``guidance=`` and ``policy=``
(another registered step policy on the same models), comma-separated::

    pocketdiff bench compare pipeline=build/sd15,steps=50,guidance=7.5 \\
        pipeline=build/sd15,backend=optimum,steps=50,guidance=7.5 \\
        bundle=build/ours,backend=executorch

Steps and guidance default to what the side pins (``pinned.pinned_defaults``: a bundle's defaults, a
distilled pipeline's trained steps), else 25 and 7.5.

Backends (the one registry is :data:`SIDE_BACKENDS`):
- a pipeline folder: ``torch`` is diffusers' ``StableDiffusionPipeline`` loaded eager fp32 with
  ``from_pretrained``, its modules called as the pipeline's ``__call__`` calls them; ``optimum`` is
  optimum's ``ORTStableDiffusionPipeline`` on optimum's own ONNX export of the folder
  (``benchmarks/baselines.py``, exported once and cached);
- a bundle: ``onnx`` or ``executorch`` through pocketdiff's runtime sessions.

**End to end is composed from each side's call trace**, not a formula per method: a dry run of the
runtime's sampler loop on shape-only sessions (``runtime.sessions.ShapeSession``) with the side's step
policy, steps and guidance lists every call one generation makes (step, role, batch); the side's end-to-end
latency is the sum over those calls of its own measured median for that (role, batch). A pipeline side's
trace is the same loop with the policy its UNet implies (diffusers runs CFG as one batch-2 UNet call per
step and encodes the two prompts one at a time, as the ``cfg`` policy does). A policy whose calls depend on
the values (``data_dependent``) is traced by real generations of :data:`TRACE_PROMPTS` instead, and its
end to end is their mean.

Components are timed one role at a time, at the batches the role registry names for it
(``export/roles.py``) and every batch a trace uses: each side loads only that component, the sides' calls
alternate (a, b, c, a, b, c, ...), and the component is freed before the next, so peak memory is one
component per side (``pairwise``: one component of two sides, A and one other, at a time). onnxruntime
sessions (ours and optimum's) are told not to spin after a call, so idle workers do not steal the CPU
from the next side's call. Ratios are each side's median over side A's.
"""

from __future__ import annotations

import gc
import json
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pocketdiff.benchmarks.baselines import optimum_component_call
from pocketdiff.benchmarks.components import arch_sources
from pocketdiff.benchmarks.latency import machine_info, measure_alternating, stats
from pocketdiff.build import Context, Stage
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.export.bundle import ExportConfig, student_bundle, write_bundle
from pocketdiff.export.components import component_specs
from pocketdiff.export.roles import ROLES, Dims, bench_cases, get_role
from pocketdiff.pinned import Pinned, pinned_defaults
from pocketdiff.pipedir import inspect_pipeline, load_pipeline
from pocketdiff.runtime.bundle import load_bundle
from pocketdiff.runtime.policies import POLICIES, Call, default_policy_name, make_policy
from pocketdiff.runtime.sampler import RuntimePipeline, check_generation_args, policy_for
from pocketdiff.runtime.sessions import BACKENDS, OnnxSession, ShapeSession, TensorSpec
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer

SIDE_BACKENDS = {"pipeline": ("torch", "optimum"), "bundle": ("onnx", "executorch")}
# ``arch=NAME[,spec=FILE][,resolution=N]``: a named architecture with random weights, built once and cached
# (``benchmarks.components.arch_sources``), then run as the pipeline or bundle side of ``backend``
ARCH_BACKENDS = ("onnx", "executorch", "torch", "optimum")
BACKEND_LABELS = {"torch": "diffusers eager fp32", "optimum": "optimum ORT", "onnx": "pocketdiff onnxruntime",
                  "executorch": "pocketdiff ExecuTorch"}
ARCH_KEYS = ("spec", "resolution", "decoder", "decoder_width")  # only with arch=
KEYS = ("pipeline", "bundle", "arch", *ARCH_KEYS, "backend", "steps", "guidance", "policy")
TRACE_PROMPTS = ("a small red circle in the top left on a grey background", "a blue square left of a yellow ring",
                 "a large green triangle in the center on a black background", "a white cross above a purple ring")


@dataclass(frozen=True)
class Side:
    kind: str  # "pipeline" or "bundle"
    path: Path
    backend: str
    steps: int
    guidance: float
    policy: str | None = None  # a runtime.policies name; None: the bundle's manifest's or the UNet's own

    def __post_init__(self):
        if self.policy is None:
            object.__setattr__(self, "policy", native_policy(self.kind, self.path, self.backend))

    @property
    def label(self) -> str:
        mode = (", CFG" if self.guidance > 1.0 else "") if self.policy == "cfg" else \
            ", w-embedded" if self.policy == "guidance_embedded" else f", {self.policy}"
        return f"{self.path.name}[{BACKEND_LABELS[self.backend]}, {self.steps} steps{mode}]"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "backend": self.backend, "steps": self.steps,
                "guidance": self.guidance, "policy": self.policy, "label": self.label}


def native_policy(kind: str, path: Path, backend: str) -> str:
    """The policy a side runs unless told otherwise: a bundle's manifest's (or its UNet's, for a bundle from
    before policies), a pipeline's UNet's. Reads the manifest only: the side's sessions verify checksums."""
    if kind == "pipeline":
        w = inspect_pipeline(path).unet_config.get("time_cond_proj_dim")
        return default_policy_name(["timestep_cond"] if w else [])
    b = load_bundle(path, verify=False)
    return policy_for(b.manifest.get("sampler"), [i["name"] for i in b.component("unet", backend).inputs]).name


def parse_side(text: str, trusted_key=None) -> Side:
    """``pipeline=DIR|bundle=DIR|arch=NAME[,backend=..][,steps=N][,guidance=W][,policy=P]`` -> :class:`Side`."""
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
    if kinds[0] != "arch" and set(ARCH_KEYS) & set(fields):
        raise PocketdiffError(f"bench compare side {text!r}: {'=, '.join(ARCH_KEYS)}= go with arch=NAME only")
    if kinds[0] == "arch":
        fields = _resolve_arch(text, fields)
        kinds = [k for k in SIDE_BACKENDS if k in fields]
    kind = kinds[0]
    backend = fields.get("backend", SIDE_BACKENDS[kind][0])
    if backend not in SIDE_BACKENDS[kind]:
        raise choice_error(f"backend for a {kind}", backend, SIDE_BACKENDS[kind])
    try:
        given = (int(fields["steps"]) if "steps" in fields else None,
                 float(fields["guidance"]) if "guidance" in fields else None)
    except ValueError as exc:
        raise PocketdiffError(f"bench compare side {text!r}: {exc}") from None
    check_generation_args(*Pinned(1, 0.0).resolve(*given))  # the values given, before any folder is read
    path = Path(fields[kind])
    if kind == "pipeline":
        inspect_pipeline(path)
        pinned = pinned_defaults(pipeline=path)
    else:
        load_bundle(path, trusted_key=trusted_key).component("unet", backend)  # it must hold this backend
        pinned = pinned_defaults(bundle=path)
    steps, guidance = pinned.resolve(*given)
    policy = fields.get("policy")
    if policy is not None:
        if kind == "pipeline":
            raise PocketdiffError(f"bench compare side {text!r}: policy= applies to a bundle (a pipeline side runs "
                                  "as diffusers does)")
        if policy not in POLICIES:
            raise choice_error("sampler policy", policy, POLICIES)
    return Side(kind, path, backend, steps, guidance, policy)


def _resolve_arch(text: str, fields: dict[str, str]) -> dict[str, str]:
    """An ``arch=`` side's fields with ``pipeline=`` or ``bundle=`` set to the cached build of that
    architecture (built on first use: minutes for SD1.5)."""
    backend = fields.get("backend", ARCH_BACKENDS[0])
    if backend not in ARCH_BACKENDS:
        raise choice_error("backend for an arch side", backend, ARCH_BACKENDS)
    try:
        resolution = int(fields["resolution"]) if "resolution" in fields else None
        width = float(fields["decoder_width"]) if "decoder_width" in fields else None
    except ValueError as exc:
        raise PocketdiffError(f"bench compare side {text!r}: {exc}") from None
    source, pipe_dir = arch_sources(fields["arch"], "torch" if backend == "optimum" else backend, resolution,
                                    unet_spec=fields.get("spec"), decoder_width=width, decoder=fields.get("decoder"))
    rest = {k: v for k, v in fields.items() if k not in ("arch", *ARCH_KEYS)}
    kind = "pipeline" if backend in SIDE_BACKENDS["pipeline"] else "bundle"
    return {**rest, "backend": backend, kind: str(pipe_dir if kind == "pipeline" else source)}


def _dry_runtime(side: Side) -> RuntimePipeline:
    """The side's runtime pipeline on shape-only sessions: its tokenizer, scheduler and policy, no models."""
    if side.kind == "bundle":
        b = load_bundle(side.path, verify=False)
        m = b.manifest
        sessions = {c.role: ShapeSession([TensorSpec.from_dict(i) for i in c.inputs],
                                         [TensorSpec.from_dict(o) for o in c.outputs], c.path)
                    for c in b.components if c.target == side.backend}
        return RuntimePipeline(b.tokenizer(), sessions, m["scheduler"]["config"], tuple(m["model"]["latent_shape"]),
                               m["model"]["latent_scale_factor"], make_policy(side.policy, _policy_params(side, m)))
    info = inspect_pipeline(side.path)
    dims = Dims.from_configs(info.unet_config, info.text_encoder_config, info.vae_config)
    sessions = {name: ShapeSession(*role.io(dims), name) for name, role in ROLES.items()}
    return RuntimePipeline(CLIPBPETokenizer.from_dir(info.tokenizer_dir), sessions, info.scheduler_config,
                           info.latent_shape, info.vae_config.get("scaling_factor", 0.18215), make_policy(side.policy))


def _policy_params(side: Side, manifest: dict) -> dict | None:
    sampler = manifest.get("sampler") or {}
    return sampler.get("params") if sampler.get("policy") == side.policy else None


def side_traces(side: Side) -> list[list[Call]]:
    """The call traces end to end is composed from: one dry run, or (a data-dependent policy) real generations
    of :data:`TRACE_PROMPTS` on the side's bundle."""
    dry = _dry_runtime(side)
    if not dry.policy.data_dependent:
        return [dry.generate(TRACE_PROMPTS[0], steps=side.steps, guidance=side.guidance, seed=0).trace]
    if side.kind != "bundle":
        raise PocketdiffError(f"policy {side.policy!r} depends on the model's values: trace it on a bundle")
    rt = RuntimePipeline.from_bundle(side.path, side.backend, policy=dry.policy)
    return [rt.generate(p, steps=side.steps, guidance=side.guidance, seed=i).trace for i, p in enumerate(TRACE_PROMPTS)]


def _pipeline_calls(side: Side, role: str, batches: list[int], threads: int, optimum_cache: str | Path
                    ) -> dict[int, Callable[[], object]]:
    """batch -> call of one component of a pipeline side (only that component is kept)."""
    info = inspect_pipeline(side.path)
    dims = Dims.from_configs(info.unet_config, info.text_encoder_config, info.vae_config)
    feeds = {b: get_role(role).fixed_inputs(dims, b) for b in batches}
    if side.backend == "optimum":
        return {b: optimum_component_call(side.path, role, feeds[b], threads, optimum_cache) for b in batches}
    torch.set_num_threads(threads)
    spec = component_specs(load_pipeline(side.path), roles=[role])[0]
    calls = {}
    for b in batches:
        args = [torch.from_numpy(feeds[b][n]) for n in spec.input_names]

        def call(module=spec.module, args=args):
            with torch.no_grad():
                return module(*args)
        calls[b] = call
    return calls


def _bundle_calls(side: Side, role: str, batches: list[int], threads: int) -> dict[int, Callable[[], object]]:
    bundle = load_bundle(side.path)
    comp = bundle.component(role, side.backend)
    inputs, outputs = [TensorSpec.from_dict(i) for i in comp.inputs], [TensorSpec.from_dict(o) for o in comp.outputs]
    if side.backend == "onnx":  # workers sleep after a call instead of spinning into the next side's call
        session = OnnxSession(bundle.file(comp.path), threads, allow_spinning=False)
    else:
        session = BACKENDS[side.backend](bundle.file(comp.path), inputs, outputs, threads)
    dims = Dims.from_bundle(bundle, side.backend)
    fixed = session.fixed_batch  # an ExecuTorch program runs only at its static batch
    return {b: (lambda feeds=get_role(role).fixed_inputs(dims, b): session.run(feeds))
            for b in batches if fixed is None or fixed == b}


def side_names(n: int) -> list[str]:
    if not 2 <= n <= 26:
        raise PocketdiffError(f"bench compare takes 2 to 26 sides, got {n}")
    return list(string.ascii_uppercase[:n])


def _calls(side: Side, role: str, batches: list[int], threads: int, optimum_cache) -> dict[int, Callable]:
    if side.kind == "pipeline":
        return _pipeline_calls(side, role, batches, threads, optimum_cache)
    return _bundle_calls(side, role, batches, threads)


def compose(traces: list[list[Call]], medians: dict[tuple[str, int], float]) -> dict:
    """End to end of one side from its traces and its own per-(role, batch) medians: the calls per trace (mean
    over traces) and, when every call's case was measured, the mean summed latency."""
    counts = Counter(f"{c.role}@{c.batch}" for t in traces for c in t)
    out = {"calls": {k: v / len(traces) for k, v in counts.items()}}
    if all((c.role, c.batch) in medians for t in traces for c in t):
        out["e2e_ms"] = sum(medians[(c.role, c.batch)] for t in traces for c in t) / len(traces)
    return out


def compare(sides: list[Side], threads: int = 2, warmup: int = 3, repeat: int = 10, progress=None,
            optimum_cache: str | Path = "build/bench/optimum", pairwise: bool = False,
            components: tuple[str, ...] | None = None) -> dict:
    """Alternate the sides' calls of each component; ratios are each side's median over side A's; each side's
    end to end is composed from its trace (module docstring).

    ``pairwise``: instead of all sides at once, alternate A with each other side in turn, loading one
    pair at a time (for models too big to hold one copy per side: four SD1.5 UNets ran out of 24 GB).
    Each ratio then comes from its own pair's alternation; A's figures pool its samples over the pairs.
    ``components`` limits the run to those roles (e.g. ``("unet",)``); the end-to-end figure then needs
    the missing ones and is left out.
    """
    names = side_names(len(sides))
    by_name = dict(zip(names, sides))
    traces = {n: side_traces(s) for n, s in by_name.items()}
    traced = {(c.role, c.batch) for ts in traces.values() for t in ts for c in t}
    roles = list(dict.fromkeys(r for r, _ in sorted(traced, key=lambda rb: list(ROLES).index(rb[0])
                                                    if rb[0] in ROLES else len(ROLES))))
    if components is not None:
        unknown = sorted(set(components) - set(roles))
        if unknown or not components:
            raise choice_error("component", unknown[0] if unknown else "", roles)
        roles = [r for r in roles if r in components]
    groups = [[names[0], n] for n in names[1:]] if pairwise else [names]
    rows, medians = [], {n: {} for n in names}
    for i, role in enumerate(roles):
        batches = sorted({b for r, b in bench_cases([role]) + sorted(traced) if r == role})
        samples: dict[int, dict[str, list[float]]] = {}
        ratios: dict[int, dict[str, float]] = {}
        a_in_group: dict[int, dict[str, float]] = {}
        for group in groups:
            calls = {n: _calls(by_name[n], role, batches, threads, optimum_cache) for n in group}
            for batch in batches:
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
    e2e = {n: {"steps": s.steps, "guidance": s.guidance, "policy": s.policy, **compose(traces[n], medians[n])}
           for n, s in by_name.items()}
    if "e2e_ms" in e2e["A"]:
        e2e["speedup_vs_a"] = {n: round(e2e["A"]["e2e_ms"] / e2e[n]["e2e_ms"], 3) for n in names[1:]
                               if "e2e_ms" in e2e[n]}
    return {"sides": {n: s.to_dict() for n, s in by_name.items()}, "components": rows, "end_to_end": e2e,
            "traces": {n: [[c.to_dict(with_time=False) for c in t] for t in ts] for n, ts in traces.items()},
            "alternation": "pairwise with A" if pairwise else "all sides", "threads": threads, "warmup": warmup,
            "repeat": repeat, "machine": machine_info(threads)}


@dataclass
class BenchStage:
    teacher_steps: int = 50  # the teacher side of the comparison (the student runs its own steps)
    threads: int = 2
    warmup: int = 3
    repeat: int = 10
    backends: tuple[str, ...] = ("onnx",)  # one comparison per runtime backend the student's bundle carries

    def validate(self) -> "BenchStage":
        for b in self.backends:
            if b not in SIDE_BACKENDS["bundle"]:
                raise choice_error("bench backend", b, SIDE_BACKENDS["bundle"])
        return self


def compare_file(backend: str) -> str:
    """The bench stage's result for ``backend`` under ``WORKDIR/bench/``."""
    return "compare.json" if backend == "onnx" else f"compare_{backend}.json"


def run_bench(ctx: Context, cfg: BenchStage) -> None:
    """The teacher exported to a bundle (``WORKDIR/bench/teacher``, the export stage's guidance, every backend
    asked for) against the student's bundle at its pinned steps, side by side, once per backend;
    ``WORKDIR/bench/compare.json`` (onnxruntime), ``compare_<backend>.json`` for the others."""
    g = ctx.recipe.config("export").guidance
    out = ctx.out("bench")
    out.mkdir(parents=True, exist_ok=True)
    teacher = write_bundle(ctx.teacher, out / "teacher", ExportConfig(targets=cfg.backends, guidance=g,
                                                                     steps=cfg.teacher_steps), overwrite=True)
    student = pinned_defaults(bundle=student_bundle(ctx))
    for backend in cfg.backends:
        sides = [Side("bundle", teacher, backend, cfg.teacher_steps, g),
                 Side("bundle", student_bundle(ctx), backend, student.steps, student.guidance)]
        result = compare(sides, cfg.threads, cfg.warmup, cfg.repeat)
        (out / compare_file(backend)).write_text(json.dumps(result, indent=1) + "\n")


STAGE = Stage("bench", BenchStage, run_bench, needs=("export",))
