"""DDSM at SD1.5 scale (issue 22): each width of the slimmable SD1.5 UNet (random weights: latency and MACs do not
depend on them) against the full UNet, side by side in one run (onnxruntime, 2 threads, 512², batch 2), and the
per-image ratio the toy's found schedules would give on SD1.5. Writes docs/ddsm_sd15.{json,md}.

    python scripts/ddsm_sd15.py                   # MACs, then ONNX exports under build/ddsm_sd15 and latency
    python scripts/ddsm_sd15.py --macs-only       # MACs alone (seconds; meta device)

Each width model is `materialise_width` of one random SD1.5 UNet, exported with the bundle's UNet wrapper;
the exports are cached (delete build/ddsm_sd15 to redo them). The timing alternates the widths call by call
(`benchmarks.latency.measure_alternating`), with every session loaded at once (about 10 GB).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from pocketdiff.architectures.factory import SD15_UNET
from pocketdiff.architectures.slimmable_unet import DEFAULT_WIDTHS, level_channels, materialise_width
from pocketdiff.benchmarks.latency import machine_info, measure_alternating
from pocketdiff.distill.ddsm_search import width_macs
from pocketdiff.export.components import ComponentSpec, UNetExport
from pocketdiff.export.onnx import export_component
from pocketdiff.export.roles import ROLES, Dims
from pocketdiff.runtime.policies import width_role
from pocketdiff.runtime.sessions import OnnxSession

OUT = Path("build/ddsm_sd15")
TOY = Path("docs/ddsm_toy.json")


def export_width(unet, width: float) -> Path:
    role = ROLES[width_role(width)]
    path = OUT / role.onnx_file
    if path.is_file():
        return path
    dims = Dims(4, 64, 768, 49408, 512)
    inputs, outputs = role.io(dims, 2)
    example = tuple(torch.tensor(500.0) if i.name == "timestep" else torch.zeros(i.shape) for i in inputs)
    module = UNetExport(unet if width == 1.0 else materialise_width(unet, width))
    spec = ComponentSpec(role.name, module, example, tuple(i.name for i in inputs), tuple(o.name for o in outputs),
                         role.batch_inputs())
    return export_component(spec, OUT)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--macs-only", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="docs/ddsm_sd15")
    args = ap.parse_args()
    with torch.device("meta"):
        meta = UNet2DConditionModel(**SD15_UNET)
    macs = width_macs(meta, DEFAULT_WIDTHS, 2)
    result = {"widths": {str(w): {"channels": [level_channels(c, w, 32) for c in SD15_UNET["block_out_channels"]],
                                  "macs_batch2": m, "macs_ratio": m / macs[1.0]} for w, m in macs.items()},
              "resolution": 512, "batch": 2, "machine": machine_info(2)}
    if not args.macs_only:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**SD15_UNET).eval()
        paths = {w: export_width(unet, w) for w in DEFAULT_WIDTHS}
        del unet
        feeds = ROLES["unet"].fixed_inputs(Dims(4, 64, 768, 49408, 512), 2)
        sessions = {w: OnnxSession(p, threads=2, allow_spinning=False) for w, p in paths.items()}
        timed = measure_alternating({str(w): (lambda s=s: s.run(feeds)) for w, s in sessions.items()}, warmup=1,
                                    repeat=args.repeat)
        for w, st in timed.items():
            result["widths"][w].update(median_ms=st.median_ms, latency_ratio=st.median_ms / timed["1.0"].median_ms)
        result["timing"] = {"backend": "onnxruntime", "threads": 2, "warmup": 1, "repeat": args.repeat,
                            "alternating": True}
    if TOY.is_file():  # the toy's found schedules, priced on SD1.5
        toy = json.loads(TOY.read_text())
        result["toy_schedules"] = {}
        for tag, st in toy["settings"].items():
            ws = [str(float(w)) for w in st["found_widths"]]
            row = {"widths": st["found_widths"],
                   "macs_ratio": sum(result["widths"][w]["macs_batch2"] for w in ws) / (len(ws) * macs[1.0])}
            if "median_ms" in result["widths"]["1.0"]:
                row["latency_ratio"] = sum(result["widths"][w]["median_ms"] for w in ws) / (
                    len(ws) * result["widths"]["1.0"]["median_ms"])
            result["toy_schedules"][tag] = row
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# DDSM at SD1.5 scale: per-width UNet cost", "",
             f"Reproduce: `python scripts/ddsm_sd15.py{' --macs-only' if args.macs_only else ''}` (random SD1.5 "
             "weights; 512², batch 2). Numbers: `ddsm_sd15.json`.", "",
             "| width | channels per level | MACs per call | vs full | onnxruntime median (2 threads) | vs full |",
             "|---|---|---|---|---|---|"]
    for w, r in result["widths"].items():
        lat = (f"{r['median_ms'] / 1000:.2f} s | {r['latency_ratio']:.3f}x" if "median_ms" in r else "not run | -")
        lines.append(f"| {w} | {r['channels']} | {r['macs_batch2'] / 1e9:.0f} G | {r['macs_ratio']:.3f}x | {lat} |")
    for tag, row in result.get("toy_schedules", {}).items():
        lines += ["", f"The toy's {tag} schedule on SD1.5: UNet MACs per image {row['macs_ratio']:.3f}x the full "
                      "width's" + (f", onnxruntime UNet time {row['latency_ratio']:.3f}x" if "latency_ratio" in row
                                   else "") + "."]
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
