"""int8 on the shipped toy student (issue 27): its fp32 ONNX bundle against the same bundle quantised to static int8,
calibrated on the student's own activations, evaluated on the same toy-val prompts and seeds. Writes
docs/int8_toy.{json,md}.

    make int8-toy        # = python scripts/int8_toy.py

The shipped student (pocketdiff/toyworld/assets/student) is a bundle; the pipeline it was exported from
(build/toy-full/steps, `make toy-full`, about 3 h) is not needed: ``quantize_onnx_bundle`` calibrates on the bundle's
fp32 ONNX models running the runtime's own loop (toy-world training captions, the bundle's steps and guidance) and
checks each component against them. ExecuTorch int8 needs the PyTorch modules (PT2E), so it is not part of this
page. Every piece is cached under build/int8_toy/: a rerun only redoes what is missing.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pocketdiff.benchmarks.quality import evaluate_source
from pocketdiff.export.quantize_bundle import quantize_onnx_bundle
from pocketdiff.generate import GenerateConfig
from pocketdiff.toyworld import TOY_TEACHER_DIR

STUDENT = TOY_TEACHER_DIR / "student"
OUT = Path("build/int8_toy")
DOCS = Path("docs")
COMMAND = "make int8-toy   # = python scripts/int8_toy.py"


@dataclass
class ToyInt8:
    """The experiment, committed."""

    n: int = 1000  # toy-val prompts (each also rephrased: 2n images per bundle)
    seed: int = 0  # the prompt set's seed; image i at seed + i (as pocketdiff eval)
    calibration: int = 32  # calibration prompts (toy-world training captions), one more held out for parity
    calibration_seed: int = 0
    threads: int = 2  # onnxruntime threads while calibrating and checking parity


def evaluate(bundle: Path, exp: ToyInt8, name: str) -> dict:
    path = OUT / f"eval_{name}_n{exp.n}.json"
    if path.is_file():
        return json.loads(path.read_text())
    m = json.loads((bundle / "manifest.json").read_text())
    gen = GenerateConfig(prompt="", steps=m["defaults"]["steps"], guidance=m["defaults"]["guidance"],
                         seed=exp.seed).validate()
    t = time.perf_counter()
    result, _ = evaluate_source(gen, "toy-val", exp.n, bundle_dir=bundle, backend="onnx")
    keep = {k: result[k] for k in ("n", "fid", "clip_score", "attribute_accuracy", "steps", "guidance", "source")}
    keep.update(accuracy_rephrased=result["rephrased"]["attribute_accuracy"], eval_wall_s=time.perf_counter() - t)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keep, indent=1) + "\n")
    return keep


def components(bundle: Path) -> list[dict]:
    """Per ONNX component: its quantisation and worst parity PSNR (dB) from the manifest."""
    rows = []
    for c in json.loads((bundle / "manifest.json").read_text())["components"]:
        if c["target"] != "onnx":
            continue
        q = c["meta"].get("quantization", {})
        worst = min(r["psnr_db"] for runs in (c["parity"] or {}).values() for r in runs.values())
        rows.append({"role": c["role"], "quantization": c["quantization"], "scheme": q.get("scheme"),
                     "psnr_db": worst, "parity_batches": sorted(c["parity"]), "ops": q.get("ops"),
                     "calibration": q.get("calibration"), "bytes": (bundle / c["path"]).stat().st_size})
    return rows


def markdown(r: dict) -> str:
    fp32, int8 = r["rows"]["fp32"], r["rows"]["int8"]
    t = r["targets"]
    lines = [
        "# int8 on the toy student: static QDQ, calibrated on its own activations", "",
        f"Made by `{COMMAND}` (quantising: {r['quantize_wall_s']:.0f} s; each eval's wall time is in the table). "
        f"The shipped student bundle's fp32 ONNX "
        f"models against the same bundle quantised by `pocketdiff.export.quantize_bundle.quantize_onnx_bundle` "
        f"({r['experiment']['calibration']} calibration prompts, toy-world training captions at the bundle's "
        f"{fp32['steps']} steps and guidance {fp32['guidance']:g}, plus one held-out prompt for parity). Both run on "
        f"onnxruntime through the unchanged runtime; the eval is `pocketdiff eval`'s protocol (toy-val, "
        f"n = {fp32['n']}, seed {r['experiment']['seed']}, the same prompts and seeds for both).", "",
        "| bundle | FID ↓ | CLIP score ↑ | attribute accuracy ↑ | rephrased accuracy | eval wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in r["rows"].items():
        lines.append(f"| {name} | {row['fid']:.4f} | {row['clip_score']:.2f} | {row['attribute_accuracy']:.3f} | "
                     f"{row['accuracy_rephrased']:.3f} | {row['eval_wall_s']:.0f} |")
    lines += ["", "## Targets", "", "| target | int8 | bound | |", "|---|---|---|---|",
              f"| attribute accuracy within 1 point of fp32 | {int8['attribute_accuracy']:.3f} "
              f"({t['accuracy_delta_points']:+.1f} points) | {fp32['attribute_accuracy'] - 0.01:.3f} | "
              f"{'met' if t['met']['accuracy within 1 point'] else '**missed**'} |",
              f"| FID ≤ 1.1 × fp32 | {int8['fid']:.4f} ({t['fid_ratio']:.3f}×) | {1.1 * fp32['fid']:.4f} | "
              f"{'met' if t['met']['FID <= 1.1x fp32'] else '**missed**'} |",
              f"| UNet PSNR ≥ 30 dB against fp32 | {t['unet_psnr_db']:.1f} dB | 30 dB | "
              f"{'met' if t['met']['UNet PSNR >= 30 dB'] else '**missed**'} |", "",
              "## Components (onnxruntime)", "",
              "Parity is against the fp32 ONNX model (which matches PyTorch to about 1e-6): a calibrated component on "
              "every call of the held-out generation, the dynamic text encoder on its fixed inputs at batch 1 and 2; "
              "the worst output's PSNR. The export gate is 25 dB.", "",
              "| role | scheme | PSNR (dB) | ops in int8 | calibration samples | int8 bytes | fp32 bytes |",
              "|---|---|---|---|---|---|---|"]
    fp32_bytes = {c["role"]: c["bytes"] for c in r["components"]["fp32"]}
    for c in r["components"]["int8"]:
        ops = ", ".join(f"{k} {v}" for k, v in (c["ops"] or {}).get("int8", {}).items()) or "weights of MatMul/Gemm"
        samples = c["calibration"]["samples"] if c["calibration"] else "-"
        lines.append(f"| {c['role']} | {c['scheme']} | {c['psnr_db']:.1f} | {ops} | {samples} | {c['bytes']:,} | "
                     f"{fp32_bytes[c['role']]:,} |")
    lines += ["", "ExecuTorch int8 (PT2E, XNNPACK) needs the student's PyTorch modules, which this page does not rebuild "
              "(`make toy-full`); `pocketdiff export --targets executorch --quantize int8 --calibration N` makes it from a "
              "pipeline, and tests/test_quantize_executorch.py checks it.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=ToyInt8.n, help="toy-val prompts per eval")
    exp = ToyInt8(n=parser.parse_args().n)
    int8 = OUT / f"student_int8_c{exp.calibration}_s{exp.calibration_seed}"
    timing = OUT / f"{int8.name}.quantize.json"
    if not int8.is_dir():
        t = time.perf_counter()
        quantize_onnx_bundle(STUDENT, int8, exp.calibration, exp.calibration_seed, threads=exp.threads)
        timing.write_text(json.dumps({"quantize_wall_s": time.perf_counter() - t}) + "\n")
    rows = {"fp32": evaluate(STUDENT, exp, "fp32"), "int8": evaluate(int8, exp, int8.name)}
    comps = {"fp32": components(STUDENT), "int8": components(int8)}
    unet = next(c["psnr_db"] for c in comps["int8"] if c["role"] == "unet")
    targets = {"accuracy_delta_points": 100 * (rows["int8"]["attribute_accuracy"] - rows["fp32"]["attribute_accuracy"]),
               "fid_ratio": rows["int8"]["fid"] / rows["fp32"]["fid"], "unet_psnr_db": unet}
    targets["met"] = {"accuracy within 1 point": targets["accuracy_delta_points"] >= -1.0,
                      "FID <= 1.1x fp32": targets["fid_ratio"] <= 1.1, "UNet PSNR >= 30 dB": unet >= 30.0}
    result = {"experiment": asdict(exp), "command": COMMAND, "bundles": {"fp32": str(STUDENT), "int8": str(int8)},
              "rows": rows, "components": comps, "targets": targets,
              "quantize_wall_s": json.loads(timing.read_text())["quantize_wall_s"]}
    DOCS.mkdir(exist_ok=True)
    (DOCS / "int8_toy.json").write_text(json.dumps(result, indent=1) + "\n")
    (DOCS / "int8_toy.md").write_text(markdown(result))
    print(f"wrote {DOCS / 'int8_toy.md'} and {DOCS / 'int8_toy.json'}")


if __name__ == "__main__":
    main()
