"""FLOPs, MACs and parameters of one module call, counted by torch's ``FlopCounterMode``.

``FlopCounterMode`` counts the matrix ops (convolution, mm/addmm, bmm/baddbmm, scaled-dot-product
attention) at 2 FLOPs per multiply-accumulate; elementwise ops, norms, softmax and biases are not
counted. Two sub-totals make the count comparable with others:

- ``conv_linear_macs``: convolutions and linear layers only. Module-hook counters such as thop
  (used by BK-SDM's ``count_macs_params.py``, which reports ~339G MACs for the SD1.x UNet at 512²)
  see only ``nn.Conv2d``/``nn.Linear`` modules, not the attention matmuls done functionally.
- ``attention_macs``: QKᵀ and attention·V (bmm/baddbmm/SDPA), which those counters miss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

_CONV_LINEAR = ("convolution", "mm", "addmm")
_ATTENTION = ("bmm", "baddbmm", "_scaled_dot_product")


@dataclass(frozen=True)
class FlopCount:
    flops: int  # 2 per multiply-accumulate, matrix ops only
    params: int
    by_op: dict[str, int] = field(default_factory=dict)  # aten op name -> FLOPs

    @property
    def macs(self) -> int:
        return self.flops // 2

    def _macs_of(self, prefixes: tuple[str, ...]) -> int:
        return sum(v for k, v in self.by_op.items() if k.startswith(prefixes)) // 2

    @property
    def conv_linear_macs(self) -> int:
        return self._macs_of(_CONV_LINEAR)

    @property
    def attention_macs(self) -> int:
        return self._macs_of(_ATTENTION)

    def to_dict(self) -> dict:
        return {**asdict(self), "macs": self.macs, "conv_linear_macs": self.conv_linear_macs,
                "attention_macs": self.attention_macs}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, args: tuple, kwargs: dict | None = None) -> FlopCount:
    """Run ``module(*args, **kwargs)`` once under ``FlopCounterMode`` (no grad) and return the counts.

    Works on the meta device too (``args`` on meta, module moved there), so SD1.5-size counts need
    no memory for activations.
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    # torch 2.13 has no formula for the CPU flash kernel that SDPA dispatches to here: without this
    # line every attention on CPU would count as zero.
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa})
    with torch.no_grad(), counter:
        module(*args, **(kwargs or {}))
    by_op = {str(op).removeprefix("aten."): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return FlopCount(int(counter.get_total_flops()), count_params(module), by_op)
