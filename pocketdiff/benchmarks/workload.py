"""The workload of one component call, op by op: multiply-accumulates and the elements each op moves.

A :class:`WorkloadMode` (a ``TorchDispatchMode``) runs a module once, on the meta device as well as on
CPU, and records for every aten op that computes something:

- ``macs``: multiply-accumulates of the matrix ops (convolution, mm/addmm, bmm/baddbmm, attention), from
  torch's own formulas (``torch.utils.flop_counter.flop_registry``, FLOPs / 2); 0 for every other op;
- ``weight_elems``: elements of the parameters and buffers the op reads for the first time in this call
  (a weight is loaded once per call, however many ops use it; an embedding lookup reads only its rows);
- ``act_elems``: elements of every other tensor the op reads or writes (inputs + outputs).

Views and metadata ops (``view``, ``t``, ``permute``, ``expand``, size queries ...) move no data and are
skipped. Bytes follow from a precision (:data:`PRECISIONS`): weights at its weight width, activations at
its activation width; the op list keeps elements, so one trace serves every precision. ``traffic="matrix"``
counts activations of the matrix ops only, as if every elementwise op, norm and softmax were fused into
its neighbour; the truth on a given runtime lies between the two counts.

Attention is traced in its plain form (``bmm`` + ``softmax``; diffusers' ``AttnProcessor``, transformers'
``eager``), which is how the phone runtimes run it: the score matrix is written and read.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.models.attention_processor import AttnProcessor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

from pocketdiff.errors import choice_error
from pocketdiff.export.components import component_specs


@dataclass(frozen=True)
class Precision:
    """How a deployed model stores weights and activations, and which peak its matrix ops run at."""

    name: str
    weight_bytes: float  # bytes per weight element
    act_bytes: float  # bytes per activation element
    compute: str  # "int8" or "fp16": which of a device's peaks bounds the matrix ops


PRECISIONS = {p.name: p for p in (
    Precision("w8a16", 1.0, 2.0, "int8"),  # Qualcomm AI Hub's SD1.5: int8 weights, 16-bit activations
    Precision("fp16", 2.0, 2.0, "fp16"),
    Precision("w6a16", 0.75, 2.0, "fp16"),  # apple/ml-stable-diffusion: 6-bit palettized weights, fp16 activations
)}


def get_precision(name: str) -> Precision:
    if name not in PRECISIONS:
        raise choice_error("precision", name, PRECISIONS)
    return PRECISIONS[name]


# Allocations without a value (an ``empty`` buffer that ``baddbmm`` ignores at beta 0): not counted, and
# neither are later reads of them.
_ALLOC = {"empty", "empty_like", "empty_strided", "new_empty"}
# Ops that move no data: size and layout queries. (Views are recognised by their schema: ``OpOverload.is_view``.)
_NO_DATA = {"detach", "alias", "lift_fresh", "_unsafe_view", "_reshape_alias", "size", "sym_size", "stride",
            "sym_stride", "numel", "sym_numel", "dim", "is_contiguous", "sym_is_contiguous", "storage_offset",
            "sym_storage_offset", "is_strides_like_format", "is_non_overlapping_and_dense", "_local_scalar_dense"}


def _sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch has no formula for the CPU flash kernel SDPA dispatches to (see benchmarks/flops.py)
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu}


def _storage_key(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):
        return None


@dataclass
class Workload:
    """One component call, op by op (parallel arrays)."""

    name: str
    ops: list[str] = field(default_factory=list)
    macs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    weight_elems: np.ndarray = field(default_factory=lambda: np.zeros(0))
    act_elems: np.ndarray = field(default_factory=lambda: np.zeros(0))
    params: int = 0

    def bytes(self, precision: Precision, traffic: str = "all") -> np.ndarray:
        """Bytes each op moves at ``precision``. ``traffic="matrix"`` counts activations only for the matrix
        ops, as if every other op were fused into its neighbour (weights are counted either way)."""
        act = self.act_elems if traffic == "all" else self.act_elems * (self.macs > 0)
        return self.weight_elems * precision.weight_bytes + act * precision.act_bytes

    def summary(self, precision: Precision | None = None) -> dict:
        out = {"name": self.name, "ops": len(self.ops), "params": self.params, "macs": int(self.macs.sum()),
               "weight_elems": int(self.weight_elems.sum()), "act_elems": int(self.act_elems.sum())}
        if precision is not None:
            out["bytes"] = int(self.bytes(precision).sum())
        return out


class WorkloadMode(TorchDispatchMode):
    """Records each computing aten op's MACs and the weight/activation elements it moves (module docstring)."""

    def __init__(self, weights: dict[int, int]):
        super().__init__()
        self.weights = weights  # storage key -> elements of that parameter or buffer
        self.seen: set[int] = set()
        self.free: set[int] = set()  # storages of value-less allocations
        self.held: list = []  # ... kept alive, so that no later tensor reuses their storage's address
        self.rows: list[tuple[str, int, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._overloadpacket.__name__
        if name in _ALLOC:
            self.free.update(_storage_key(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
            self.held.append(out)
            return out
        if name in _NO_DATA or getattr(func, "is_view", False):
            return out
        formula = _EXTRA_FORMULAS.get(func) or flop_registry.get(func._overloadpacket)
        macs = int(formula(*args, **kwargs, out_val=out)) // 2 if formula else 0
        weight = act = 0
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        for i, t in enumerate(inputs):
            key = _storage_key(t)
            if key in self.weights:
                if name == "embedding" and i == 0:  # a lookup reads only the rows it gathers
                    weight += out.numel()
                elif key not in self.seen:
                    self.seen.add(key)
                    weight += self.weights[key]
            elif key not in self.free:
                act += t.numel()
        act += sum(t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        self.rows.append((name, macs, weight, act))
        return out


def module_workload(module: torch.nn.Module, args: tuple, name: str = "") -> Workload:
    """Run ``module(*args)`` once (no grad) under :class:`WorkloadMode` and return its op list."""
    tensors = list(module.parameters()) + list(module.buffers())
    weights = {}
    for t in tensors:
        key = _storage_key(t)
        if key is not None:
            weights[key] = t.numel()
    mode = WorkloadMode(weights)
    with torch.no_grad(), mode:
        module(*args)
    cols = list(zip(*mode.rows)) if mode.rows else [(), (), (), ()]
    return Workload(name, list(cols[0]), *(np.asarray(c, dtype=np.float64) for c in cols[1:]),
                    params=sum(t.numel() for t in module.parameters()))


@contextlib.contextmanager
def plain_attention(pipe):
    """Temporarily run ``pipe``'s attention as bmm + softmax (diffusers ``AttnProcessor``, transformers
    ``eager``), as the phone runtimes do; restores the previous processors after."""
    models = [m for m in (getattr(pipe, "unet", None), getattr(pipe, "vae", None))
              if m is not None and hasattr(m, "set_attn_processor")]
    before = [dict(m.attn_processors) for m in models]
    text = getattr(pipe, "text_encoder", None)
    text_before = text.config._attn_implementation if text is not None else None
    for m in models:
        m.set_attn_processor(AttnProcessor())
    if text is not None:
        text.set_attn_implementation("eager")
    try:
        yield pipe
    finally:
        for m, procs in zip(models, before):
            m.set_attn_processor(procs)
        if text is not None:
            text.set_attn_implementation(text_before)


def component_workload(pipe, role: str, batch: int) -> Workload:
    """The workload of one call of ``pipe``'s ``role`` component (``export/components.py``'s wrapper) at
    ``batch``, traced with zero inputs on the models' device (the meta device needs no memory)."""
    with plain_attention(pipe):
        spec = component_specs(pipe, roles=[role])[0]
        with torch.device(next(spec.module.parameters()).device):
            example = tuple(torch.zeros((batch, *x.shape[1:]) if n in spec.batch_inputs else x.shape, dtype=x.dtype)
                            for x, n in zip(spec.example, spec.input_names))
        return module_workload(spec.module, example, f"{role}@{batch}")
