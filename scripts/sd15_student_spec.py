"""Evolve the SD1.5 student's UNet spec further on SD1.5's measured per-block latency table, guided by the
toy's redundancy findings: ``pocketdiff/architectures/specs/sd15-student.json``.

    make sd15-student-spec   # = pocketdiff bench blocks --arch sd15 ... ; python scripts/sd15_student_spec.py

SnapFusion's evolution needs the model's own quality (ΔCLIP per block); SD1.5's weights are not here, so the
value of a block comes from the toy teacher's architecture evolution (``docs/efficient_unet_toy.json``,
``make slim-toy``): the blocks it removed within its quality floor, mapped onto SD1.5 level by level from the
lowest resolution up (the toy UNet has three levels, SD1.5 four; the extra one is SD1.5's highest resolution,
which the shipped spec already thins as SnapFusion does). Starting from the shipped spec
(``specs/sd15-snapfusion.json``), the script removes the mapped blocks that save the most measured latency
first, until the table's estimate of the batch-1 UNet is within ``--budget`` × SD1.5's, then writes the spec
with the reason for each block. A record of the choice goes to ``docs/sd15_student_spec.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from pocketdiff.architectures.elastic_unet import skippable_blocks
from pocketdiff.architectures.factory import SPECS_DIR, get_architecture, load_unet_spec
from pocketdiff.benchmarks.blocks import load_latency_table

SHIPPED = SPECS_DIR / "sd15-snapfusion.json"
OUT = SPECS_DIR / "sd15-student.json"


def map_block(name: str, src_levels: int, dst_levels: int) -> str:
    """A block's name in a UNet with ``dst_levels`` resolution levels, aligned from the lowest resolution:
    ``up_blocks.i`` and the mid block keep their index, ``down_blocks.i`` moves by the level difference."""
    m = re.match(r"down_blocks\.(\d+)\.(.*)", name)
    return f"down_blocks.{int(m.group(1)) + dst_levels - src_levels}.{m.group(2)}" if m else name


def evolve(table, start: list[str], candidates: list[str], budget_ms: float) -> tuple[list[str], list[dict]]:
    """Remove candidates, largest measured saving first, until the estimate is within budget."""
    removed, steps = list(start), []
    for block in sorted(candidates, key=table.saving_ms, reverse=True):
        if table.estimate_ms(removed) <= budget_ms:
            break
        if block in removed:
            continue
        removed.append(block)
        steps.append({"block": block, "saving_ms": round(table.saving_ms(block), 1),
                      "estimate_ms": round(table.estimate_ms(removed), 1)})
    return removed, steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", default="benchmarks/latency_tables/sd15-onnx-cpu-2t-b1.json")
    p.add_argument("--target", default="onnx-cpu-2t")
    p.add_argument("--toy", default="docs/efficient_unet_toy.json", help="the toy evolution's record (make slim-toy)")
    p.add_argument("--budget", type=float, default=0.42,
                   help="batch-1 UNet latency budget as a fraction of SD1.5's (docs/sd15_benchmark.md derives it "
                        "from the 25x end-to-end target)")
    p.add_argument("--record", default="docs/sd15_student_spec.json")
    args = p.parse_args(argv)
    table = load_latency_table(args.table, args.target)
    toy = json.loads(Path(args.toy).read_text())["evolution"]
    src_levels = len(get_architecture("toy").unet["block_out_channels"])
    dst_levels = len(get_architecture("sd15").unet["block_out_channels"])
    with torch.device("meta"):
        sd15 = UNet2DConditionModel(**get_architecture("sd15").unet)
    sd_skippable = {b.name for b in skippable_blocks(sd15) if b.skippable}
    candidates = [map_block(b, src_levels, dst_levels) for b in toy["removed_blocks"]]
    candidates = [b for b in candidates if b in sd_skippable and b in table.blocks]
    start = load_unet_spec(SHIPPED)["removed_blocks"]
    budget_ms = args.budget * table.unet_ms
    removed, steps = evolve(table, start, candidates, budget_ms)
    shipped = json.loads(SHIPPED.read_text())
    sources = dict(shipped["_sources"])
    for s in steps:
        toy_name = next(b for b in toy["removed_blocks"] if map_block(b, src_levels, dst_levels) == s["block"])
        sources[s["block"]] = (f"toy evolution removed {toy_name} within its quality floor (docs/efficient_unet.md); "
                               f"measured SD1.5 saving {s['saving_ms']} ms at batch 1 ({args.target})")
    spec = {"_comment": "The SD1.5 student's UNet (architecture sd15-student): the shipped SnapFusion-like spec "
                        "(sd15-snapfusion.json) evolved further on SD1.5's measured batch-1 per-block latency "
                        "table, guided by the toy's redundancy findings; written by scripts/sd15_student_spec.py.",
            "_sources": sources, "removed_blocks": removed}
    OUT.write_text(json.dumps(spec, indent=2) + "\n")
    record = {"command": "make sd15-student-spec", "table": args.table, "target": args.target,
              "unet_ms": table.unet_ms, "budget": args.budget, "budget_ms": round(budget_ms, 1),
              "shipped_estimate_ms": round(table.estimate_ms(start), 1),
              "final_estimate_ms": round(table.estimate_ms(removed), 1),
              "budget_met": table.estimate_ms(removed) <= budget_ms, "candidates": candidates, "steps": steps,
              "removed_blocks": removed}
    Path(args.record).write_text(json.dumps(record, indent=1) + "\n")
    sys.stdout.write(json.dumps({k: v for k, v in record.items() if k != "candidates"}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
