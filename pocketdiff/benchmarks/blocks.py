"""Per-block latency lookup table for a UNet: each down/mid/up ResNet and cross-attention sub-block.

UNet slimming (SnapFusion's architecture evolution) reads the latency of removing a block from this
table. Blocks are named by their module path in diffusers' ``UNet2DConditionModel``
(``down_blocks.1.attentions.0``, ``mid_block.resnets.1``, ``up_blocks.3.resnets.2``). Each is timed
alone on the inputs it receives inside one real forward pass (captured with forward pre-hooks), so
shapes and cross-attention context are the real ones.

A table file holds several tables keyed by *target* (e.g. ``torch-cpu-2t``, or a phone's
``executorch-xnnpack-pixel8``): a table measured on a device can be merged in and selected instead
of this machine's. Schema: ``benchmarks/latency_table.schema.json`` (format version 1), validated on
write and on load.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pocketdiff.architectures.elastic_unet import block_kind, unet_blocks
from pocketdiff.benchmarks.flops import count_flops
from pocketdiff.benchmarks.latency import measure
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.export.components import xnnpack_friendly
from pocketdiff.export.executorch import export_program
from pocketdiff.pipedir import atomic_output_file
from pocketdiff.runtime.sessions import ExecuTorchSession, OnnxSession, TensorSpec

FORMAT_VERSION = 1
SCHEMA = Path(__file__).with_name("latency_table.schema.json")
BLOCK_BACKENDS = ("torch", "onnx", "executorch")


class BlockCall(torch.nn.Module):
    """One block called as inside the UNet, with its tensor inputs as positional arguments (for
    export): ``forward(*tensors)`` -> the block's output tensor."""

    def __init__(self, block: torch.nn.Module, args: tuple, kwargs: dict):
        super().__init__()
        self.block = block
        self.args, self.kwargs = args, kwargs
        self.arg_slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        self.kw_slots = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]

    def example(self) -> tuple:
        return tuple(self.args[i] for i in self.arg_slots) + tuple(self.kwargs[k] for k in self.kw_slots)

    def forward(self, *tensors):
        args, kwargs = list(self.args), dict(self.kwargs)
        for i, t in zip(self.arg_slots, tensors):
            args[i] = t
        for k, t in zip(self.kw_slots, tensors[len(self.arg_slots):]):
            kwargs[k] = t
        out = self.block(*args, **kwargs)
        return out if isinstance(out, torch.Tensor) else out[0]  # Transformer2DModel: (sample,) or output


def _block_runner(call: BlockCall, backend: str, threads: int, workdir: Path):
    """A zero-argument call of ``call`` on its example inputs on ``backend`` (exported to
    ``workdir`` for onnx/executorch)."""
    example = call.example()
    if backend == "torch":
        def run():
            with torch.no_grad():
                return call(*example)
        return run
    feeds = {f"in{i}": t.numpy() for i, t in enumerate(example)}
    if backend == "onnx":
        path = workdir / "block.onnx"
        with torch.no_grad():
            program = torch.onnx.export(call.eval(), example, input_names=list(feeds), output_names=["out"],
                                        dynamo=True, verbose=False)
        program.save(str(path))
        session = OnnxSession(path, threads)
        return lambda: session.run(feeds)

    path = workdir / "block.pte"
    export_program(call, example, path)  # the caller has applied xnnpack_friendly to the UNet
    with torch.no_grad():
        out = call(*example)
    session = ExecuTorchSession(path, [TensorSpec(n, tuple(t.shape), str(feeds[n].dtype)) for n, t in zip(feeds, example)],
                                [TensorSpec("out", tuple(out.shape), str(out.numpy().dtype))], threads)
    return lambda: session.run(feeds)


def capture_block_inputs(unet, args: tuple) -> dict[str, tuple[tuple, dict]]:
    """Run ``unet(*args)`` once and record each block's (args, kwargs) as it is called."""
    captured: dict[str, tuple[tuple, dict]] = {}
    hooks = []
    for name, module in unet_blocks(unet):
        def hook(mod, a, kw, name=name):
            captured.setdefault(name, (tuple(a), dict(kw)))
        hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            unet(*args)
    finally:
        for h in hooks:
            h.remove()
    return captured


def _shapes(args: tuple, kwargs: dict) -> dict[str, list[int]]:
    out = {f"arg{i}": list(a.shape) for i, a in enumerate(args) if isinstance(a, torch.Tensor)}
    out.update({k: list(v.shape) for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
    return out


class _Passthrough(torch.nn.Module):
    """The cheapest possible exported call on a block's input: its time is the backend's per-call overhead."""

    def forward(self, x):
        return x * 1.0


def measure_block_latency(unet, batch: int = 2, backend: str = "torch", threads: int = 2, warmup: int = 3,
                          repeat: int = 10, progress: Callable[[int, int], None] | None = None,
                          only: list[str] | None = None, whole: bool = True) -> dict:
    """One latency table (the value stored under a target key) for ``unet`` at its sample size.

    ``torch`` times each block's module directly; ``onnx`` and ``executorch`` export each block alone
    (with its captured inputs as example, ExecuTorch through the XNNPACK rewrite the bundle export
    uses) and time the exported block in onnxruntime / the ExecuTorch runtime.

    With ``whole``, the table also holds the whole UNet's latency on the same backend (``unet``) and
    the backend's per-call overhead (``call_overhead_ms``: a pass-through of the first block's input).
    Each block timed alone pays that overhead once, which the UNet pays once for all blocks, so a
    removal saves about ``median_ms - call_overhead_ms`` (:meth:`LatencyTable.saving_ms`)."""
    if backend not in BLOCK_BACKENDS:
        raise choice_error("per-block latency backend", backend, BLOCK_BACKENDS)
    torch.set_num_threads(threads)
    cfg = unet.config
    s, c = cfg.sample_size, cfg.in_channels
    d = cfg.cross_attention_dim
    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(batch, c, s, s, generator=gen), torch.tensor(500.0),
            torch.randn(batch, 77, d, generator=gen))
    inputs = capture_block_inputs(unet.eval(), args)
    blocks = {}
    chosen = [(n, m) for n, m in unet_blocks(unet) if only is None or n in only]
    unknown = sorted(set(only or ()) - {n for n, _ in chosen})
    if unknown:
        raise PocketdiffError(f"unknown UNet block {unknown[0]!r}")
    flops = {name: count_flops(module, *inputs[name]) for name, module in chosen}
    if backend == "executorch":  # the export-only XNNPACK rewrite of the bundle export, on the whole UNet
        from types import SimpleNamespace

        rewrite = xnnpack_friendly(SimpleNamespace(unet=unet))
    else:
        rewrite = contextlib.nullcontext()
    with rewrite:
        for i, (name, module) in enumerate(chosen):
            a, kw = inputs[name]
            with tempfile.TemporaryDirectory(prefix="pocketdiff-block-") as tmp:
                run = _block_runner(BlockCall(module, a, kw), backend, threads, Path(tmp))
                stats = measure(run, warmup, repeat)
                del run
            blocks[name] = {"kind": block_kind(name), "median_ms": round(stats.median_ms, 4),
                            "min_ms": round(stats.min_ms, 4), "max_ms": round(stats.max_ms, 4),
                            "macs": flops[name].macs, "params": flops[name].params, "input_shapes": _shapes(a, kw)}
            if progress:
                progress(i + 1, len(chosen) + 2 * whole)
        extra = {}
        if whole:
            timed = {}
            first = inputs[chosen[0][0]][0][0]
            for j, (key, call) in enumerate((("call_overhead_ms", BlockCall(_Passthrough(), (first,), {})),
                                             ("unet", BlockCall(unet, args, {})))):
                with tempfile.TemporaryDirectory(prefix="pocketdiff-block-") as tmp:
                    run = _block_runner(call, backend, threads, Path(tmp))
                    timed[key] = measure(run, warmup, repeat)
                    del run
                if progress:
                    progress(len(chosen) + j + 1, len(chosen) + 2)
            whole_flops = count_flops(unet, args)
            extra = {"call_overhead_ms": round(timed["call_overhead_ms"].median_ms, 4),
                     "unet": {"median_ms": round(timed["unet"].median_ms, 4), "min_ms": round(timed["unet"].min_ms, 4),
                              "max_ms": round(timed["unet"].max_ms, 4), "macs": whole_flops.macs,
                              "params": whole_flops.params}}
    return {"backend": backend, "threads": threads, "batch": batch, "sample_size": s, "repeat": repeat,
            "warmup": warmup, **extra, "blocks": blocks}


def target_key(backend: str, threads: int) -> str:
    return f"{backend}-cpu-{threads}t"


def write_latency_table(path: str | Path, target: str, table: dict, machine: dict) -> Path:
    """Add (or replace) ``target``'s table in the file at ``path`` (created if missing), validated."""
    import jsonschema

    path = Path(path)
    doc = _read(path) if path.exists() else {"format_version": FORMAT_VERSION, "tables": {}}
    doc["tables"][target] = {**table, "machine": machine}
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    with atomic_output_file(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def _read(path: Path) -> dict:
    import jsonschema

    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PocketdiffError(f"cannot read latency table {path}: {exc}") from None
    if doc.get("format_version") != FORMAT_VERSION:
        raise PocketdiffError(f"latency table {path} has format_version {doc.get('format_version')!r}; "
                              f"this pocketdiff reads {FORMAT_VERSION}")
    try:
        jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    except jsonschema.ValidationError as exc:
        raise PocketdiffError(f"latency table {path} does not match its schema: {exc.message}") from None
    return doc


@dataclass(frozen=True)
class LatencyTable:
    """One target's per-block latencies, as read from a table file."""

    target: str
    blocks: dict[str, dict]
    unet_ms: float | None = None  # the whole UNet on the same backend, if measured
    call_overhead_ms: float = 0.0

    def latency_ms(self, block: str) -> float:
        if block not in self.blocks:
            raise PocketdiffError(f"latency table {self.target!r} has no block {block!r}")
        return self.blocks[block]["median_ms"]

    def saving_ms(self, block: str) -> float:
        """The estimated latency saved by removing ``block`` from the UNet: its time alone less the
        per-call overhead that timing it alone added (never below zero)."""
        return max(self.latency_ms(block) - self.call_overhead_ms, 0.0)

    def estimate_ms(self, removed) -> float:
        """The whole UNet's latency with ``removed`` blocks gone."""
        if self.unet_ms is None:
            raise PocketdiffError(f"latency table {self.target!r} has no whole-UNet latency ('unet'); measure it "
                                  "again with `pocketdiff bench blocks` (which now records it)")
        return self.unet_ms - sum(self.saving_ms(b) for b in removed)


def load_latency_table(path: str | Path, target: str) -> LatencyTable:
    doc = _read(Path(path))
    if target not in doc["tables"]:
        raise choice_error(f"target in latency table {path}:", target, doc["tables"])
    table = doc["tables"][target]
    return LatencyTable(target, table["blocks"], table.get("unet", {}).get("median_ms"),
                        table.get("call_overhead_ms", 0.0))
