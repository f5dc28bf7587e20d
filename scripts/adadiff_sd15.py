"""AdaDiff at SD1.5 scale (issue 24): the segments and exit heads of an SD1.5 UNet with exits at every allowed level
(3, 2, 1; random weights: latency and MACs do not depend on them; heads as the toy's: 2 ResNet blocks at the first
level's width), their MACs per call, their onnxruntime latencies side by side in one run (2 threads, 512², batch 2,
alternating call by call), and the per-image ratios the toy's exit histogram (docs/adadiff_toy.json) would give on
SD1.5 with the toy's exits (levels 2 and 1, mapped by level: the same number of up blocks skipped). Writes
docs/adadiff_sd15.{json,md}.

    make adadiff-sd15                                 # = python scripts/adadiff_sd15.py
    python scripts/adadiff_sd15.py --macs-only        # MACs alone (seconds; meta device)

The exports are the bundle's own wrappers (`export/components.py`), cached under build/adadiff_sd15 (delete it to
redo them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from pocketdiff.architectures.exit_unet import as_exit_unet
from pocketdiff.architectures.factory import SD15_UNET
from pocketdiff.architectures.unet_levels import segment_symbols
from pocketdiff.benchmarks.flops import count_flops
from pocketdiff.benchmarks.latency import machine_info, measure_alternating
from pocketdiff.export.components import WRAPPERS, ComponentSpec
from pocketdiff.export.onnx import export_component
from pocketdiff.export.roles import ROLES, Dims
from pocketdiff.runtime.policies import SEG_IN, UNET, exit_role, seg_role
from pocketdiff.runtime.sessions import OnnxSession

OUT = Path("build/adadiff_sd15")
TOY = Path("docs/adadiff_toy.json")
EXITS = [3, 2, 1]
HEAD = {"channels": None, "blocks": 2, "uem_hidden": 64}
CONFIG = {**SD15_UNET, "adadiff_exits": EXITS}
DIMS = Dims(4, 64, 768, 49408, 512, segments=tuple(segment_symbols(CONFIG).items()))
ROLE_ORDER = (UNET, SEG_IN, seg_role(2), seg_role(1), seg_role(0), exit_role(3), exit_role(2), exit_role(1))


class _Pipe:  # what WRAPPERS read: the UNet
    def __init__(self, unet):
        self.unet = unet


def spec(unet, role_name: str) -> ComponentSpec:
    role = ROLES[role_name]
    inputs, outputs = role.io(DIMS, 2)
    example = tuple(torch.tensor(500.0) if i.name == "timestep" else torch.zeros(i.shape) for i in inputs)
    return ComponentSpec(role.name, WRAPPERS[role.name](_Pipe(unet)), example, tuple(i.name for i in inputs),
                         tuple(o.name for o in outputs), role.batch_inputs())


def exit_sd15(device: str) -> torch.nn.Module:
    with torch.device(device):
        return as_exit_unet(UNet2DConditionModel(**SD15_UNET), EXITS, HEAD).eval()


def path_cost(cost: dict[str, float], level: int, exits: list[int]) -> float:
    """One step that stops at ``level`` (0: the full UNet) with heads at ``exits``: seg_in, then down the levels,
    each segment and each head on the way."""
    total, n = cost[SEG_IN], 4
    for lv in range(n - 1, level - 1, -1):
        if lv < n - 1:
            total += cost[seg_role(lv)]
        if lv in exits and lv >= max(level, 1):
            total += cost[exit_role(lv)]
    return total


def per_image(cost: dict[str, float], counts: list[list[int]], exits: list[int]) -> float:
    """Per-image cost over the plain UNet's, for a histogram of per-step stop levels."""
    spent = sum(c[lv] * path_cost(cost, lv, exits) for c in counts for lv in range(len(c)))
    return spent / (sum(sum(c) for c in counts) * cost[UNET])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--macs-only", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="docs/adadiff_sd15")
    args = ap.parse_args()
    meta = exit_sd15("meta")
    macs = {r: count_flops(spec(meta, r).module, tuple(t.to("meta") for t in spec(meta, r).example)).macs
            for r in ROLE_ORDER}
    toy = json.loads(TOY.read_text())["settings"] if TOY.is_file() else {}
    hists = {slug: st["histogram"]["counts"] for slug, st in toy.items() if "histogram" in st}
    result = {"exits": EXITS, "head": HEAD, "macs_batch2": macs, "resolution": 512, "batch": 2,
              "toy_exits": [2, 1], "machine": machine_info(2),
              "macs_per_image_ratio": {slug: per_image(macs, h, [2, 1]) for slug, h in hists.items()},
              "full_path_macs_ratio": path_cost(macs, 0, [2, 1]) / macs[UNET]}
    if not args.macs_only:
        torch.manual_seed(0)
        unet = exit_sd15("cpu")
        paths = {}
        for r in ROLE_ORDER:
            paths[r] = OUT / ROLES[r].onnx_file
            if not paths[r].is_file():
                export_component(spec(unet, r), OUT)
        del unet
        sessions = {r: OnnxSession(p, threads=2, allow_spinning=False) for r, p in paths.items()}
        feeds = {r: ROLES[r].fixed_inputs(DIMS, 2) for r in paths}
        timed = measure_alternating({r: (lambda s=s, f=feeds[r]: s.run(f)) for r, s in sessions.items()}, warmup=1,
                                    repeat=args.repeat)
        ms = {r: st.median_ms for r, st in timed.items()}
        result["median_ms"] = ms
        result["latency_per_image_ratio"] = {slug: per_image(ms, h, [2, 1]) for slug, h in hists.items()}
        result["full_path_latency_ratio"] = path_cost(ms, 0, [2, 1]) / ms[UNET]
        result["timing"] = {"backend": "onnxruntime", "threads": 2, "warmup": 1, "repeat": args.repeat,
                            "alternating": True}
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    timed = "median_ms" in result
    lines = ["# AdaDiff at SD1.5 scale", "",
             f"Reproduce: `python scripts/adadiff_sd15.py{' --macs-only' if args.macs_only else ''}` (random SD1.5 "
             "weights; 512², batch 2 as two-pass CFG runs it; exits at levels 3, 2, 1, heads of 2 ResNet blocks at 320 "
             "channels, 64x64). Numbers: `adadiff_sd15.json`.", "",
             "| graph | MACs per call | vs the UNet |" + (" onnxruntime median (2 threads) |" if timed else ""),
             "|---|---|---|" + ("---|" if timed else "")]
    for r in ROLE_ORDER:
        lat = f" {result['median_ms'][r] / 1000:.3f} s |" if timed else ""
        lines.append(f"| `{r}` | {macs[r] / 1e9:.1f} G | {macs[r] / macs[UNET]:.3f}x |{lat}")
    lines += ["", f"Every segment in turn with the toy's two heads on the way (no exit fires): "
                  f"{result['full_path_macs_ratio']:.3f}x the UNet's MACs"
              + (f", {result['full_path_latency_ratio']:.3f}x its onnxruntime time." if timed else "."), ""]
    for slug in hists:
        lines.append(f"- The toy's exit histogram at {slug} (docs/adadiff_toy.md), applied to SD1.5 with exits at "
                     f"levels 2 and 1: UNet MACs per image {result['macs_per_image_ratio'][slug]:.3f}x"
                     + (f", onnxruntime UNet time per image {result['latency_per_image_ratio'][slug]:.3f}x."
                        if timed else "."))
    if not hists:
        lines.append("- No toy exit histogram (run `make adadiff-toy` first).")
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
