"""``pocketdiff bench compare A B``: two configurations side by side in one process, alternating.

A side is ``pipeline=DIR`` or ``bundle=DIR``, with optional ``backend=`` (torch for a pipeline;
onnx/executorch for a bundle), ``steps=`` and ``guidance=``, comma-separated::

    pocketdiff bench compare pipeline=build/sd15,steps=50,guidance=7.5 bundle=build/ours,backend=executorch,steps=8,guidance=1

Per component (text encoder, UNet step at the batch the side's guidance needs, VAE decoder) the
two sides' calls alternate (a, b, a, b, ...), and B/A ratios of the medians are reported. The
composed end-to-end latency of each side is ``text + steps x unet_step + decoder`` where a CFG step
is one batch-2 UNet call, as the runtime runs it; when the side's UNet can also run at batch 1, the
issue's form ``text + steps x (2 if CFG else 1) x unet(batch 1) + decoder`` is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pocketdiff.errors import PocketdiffError, choice_error


@dataclass(frozen=True)
class Side:
    kind: str  # "pipeline" or "bundle"
    path: Path
    backend: str
    steps: int
    guidance: float

    @property
    def cfg(self) -> bool:
        return self.guidance > 1.0

    @property
    def label(self) -> str:
        return f"{self.path.name}[{self.backend}, {self.steps} steps{', CFG' if self.cfg else ''}]"


def parse_side(text: str) -> Side:
    """``pipeline=DIR|bundle=DIR[,backend=..][,steps=N][,guidance=W]`` -> :class:`Side` (validated)."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise PocketdiffError(f"bench compare side {text!r}: expected key=value items, got {part!r}")
        fields[key.strip()] = value.strip()
    kinds = [k for k in ("pipeline", "bundle") if k in fields]
    if len(kinds) != 1:
        raise PocketdiffError(f"bench compare side {text!r}: give exactly one of pipeline=DIR or bundle=DIR")
    unknown = set(fields) - {"pipeline", "bundle", "backend", "steps", "guidance"}
    if unknown:
        raise choice_error("bench compare key", sorted(unknown)[0], ("pipeline", "bundle", "backend", "steps",
                                                                     "guidance"))
    kind = kinds[0]
    backend = fields.get("backend", "torch" if kind == "pipeline" else "onnx")
    allowed = ("torch",) if kind == "pipeline" else ("onnx", "executorch")
    if backend not in allowed:
        raise choice_error(f"backend for a {kind}", backend, allowed)
    try:
        steps, guidance = int(fields.get("steps", "25")), float(fields.get("guidance", "7.5"))
    except ValueError as exc:
        raise PocketdiffError(f"bench compare side {text!r}: {exc}") from None
    from pocketdiff.runtime.sampler import check_generation_args

    check_generation_args(steps, guidance)
    return Side(kind, Path(fields[kind]), backend, steps, guidance)


def _callables(side: Side, threads: int) -> dict[tuple[str, int], Callable[[], object]]:
    """(role, batch) -> a zero-argument call of that component on fixed inputs."""
    from pocketdiff.export.parity import fixed_inputs

    calls = {}
    batches = {"text_encoder": [1], "unet": [1, 2], "vae_decoder": [1]}
    if side.kind == "pipeline":
        import torch

        from pocketdiff.export.components import component_specs
        from pocketdiff.pipedir import load_pipeline

        torch.set_num_threads(threads)
        pipe = load_pipeline(side.path)
        latent = (pipe.unet.config.in_channels,) + (pipe.unet.config.sample_size,) * 2
        for spec in component_specs(pipe):
            for b in batches[spec.name]:
                feeds = fixed_inputs(spec.name, b, latent, pipe.text_encoder.config.hidden_size,
                               pipe.text_encoder.config.vocab_size)
                args = [torch.from_numpy(feeds[n]) for n in spec.input_names]

                def call(module=spec.module, args=args):
                    with torch.no_grad():
                        return module(*args)
                calls[(spec.name, b)] = call
        return calls
    from pocketdiff.runtime.backends import BACKENDS
    from pocketdiff.runtime.bundle import load_bundle

    bundle = load_bundle(side.path)
    hidden = next(i["shape"][-1] for i in bundle.component("unet", side.backend).inputs
                  if i["name"] == "encoder_hidden_states")
    for role, bs in batches.items():
        comp = bundle.component(role, side.backend)
        session = BACKENDS[side.backend](bundle.path / comp.path, comp, threads)
        fixed = comp.inputs[0]["shape"][0]
        for b in bs:
            if isinstance(fixed, int) and fixed != b:
                continue
            feeds = fixed_inputs(role, b, bundle.manifest["model"]["latent_shape"], hidden, 1000)
            calls[(role, b)] = lambda session=session, feeds=feeds: session.run(feeds)
    return calls


def _e2e(side: Side, ms: dict[tuple[str, int], float]) -> dict:
    step_batch = 2 if side.cfg else 1
    out = {"steps": side.steps, "guidance": side.guidance}
    if ("unet", step_batch) in ms:
        out["e2e_ms"] = ms[("text_encoder", 1)] + side.steps * ms[("unet", step_batch)] + ms[("vae_decoder", 1)]
    if ("unet", 1) in ms:
        out["e2e_batch1_formula_ms"] = (ms[("text_encoder", 1)] + side.steps * (2 if side.cfg else 1) * ms[("unet", 1)]
                                        + ms[("vae_decoder", 1)])
    return out


def compare(a: Side, b: Side, threads: int = 2, warmup: int = 3, repeat: int = 10) -> dict:
    from pocketdiff.benchmarks.latency import machine_info, measure_alternating

    calls = {"A": _callables(a, threads), "B": _callables(b, threads)}
    rows, medians = [], {"A": {}, "B": {}}
    for key in sorted(set(calls["A"]) | set(calls["B"]), key=lambda k: (("text_encoder", "unet", "vae_decoder")
                                                                          .index(k[0]), k[1])):
        present = {s: calls[s][key] for s in ("A", "B") if key in calls[s]}
        stats = measure_alternating(present, warmup, repeat)
        row = {"component": key[0], "batch": key[1]}
        for s, st in stats.items():
            medians[s][key] = st.median_ms
            row[s] = st.to_dict()
        if len(stats) == 2:
            row["ratio_b_over_a"] = round(stats["B"].median_ms / stats["A"].median_ms, 4)
        rows.append(row)
    e2e = {"A": _e2e(a, medians["A"]), "B": _e2e(b, medians["B"])}
    if "e2e_ms" in e2e["A"] and "e2e_ms" in e2e["B"]:
        e2e["speedup_a_over_b"] = round(e2e["A"]["e2e_ms"] / e2e["B"]["e2e_ms"], 3)
    return {"A": {**a.__dict__, "path": str(a.path), "label": a.label},
            "B": {**b.__dict__, "path": str(b.path), "label": b.label},
            "components": rows, "end_to_end": e2e, "threads": threads, "warmup": warmup, "repeat": repeat,
            "machine": machine_info(threads)}
