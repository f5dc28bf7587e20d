"""AdaDiff on the toy teacher (issue 24): exit heads trained once with the uncertainty-aware layer-wise loss (and
once with the plain layer-wise loss, the ablation; once with the backbone unfrozen), the threshold calibrated for
25 DDIM steps and for 8 DPM-Solver++ steps, 1000 toy-val prompts and seeds per evaluation, the compute from one
`bench compare` run's traces per setting. Writes docs/adadiff_toy.{md,json} and its plots.

    make adadiff-toy        # = python scripts/adadiff_toy.py

Every piece is cached under build/adadiff/ (training resumes from its checkpoint, calibration from its curve
file, each evaluation from its JSON): a rerun redoes only what is missing.

"Full UNet" is the same bundle's plain `unet` role under cfg, with the same sampler, steps, guidance, prompts and
seeds. The heads are trained on forward-noised images (sampler-independent); only the threshold is per sampler.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from adadiff_toy_report import write_report  # the sibling script: tables and plots

from pocketdiff.benchmarks.compare import Side, compare
from pocketdiff.benchmarks.quality import evaluate_source, prompt_set
from pocketdiff.distill.adadiff_calibrate import AdaDiffCalibrateConfig, adadiff_calibrate, role_macs
from pocketdiff.distill.adadiff_train import AdaDiffTrainConfig, adadiff_train
from pocketdiff.export.bundle import ExportConfig, write_bundle
from pocketdiff.export.components import pipeline_roles
from pocketdiff.generate import GenerateConfig
from pocketdiff.pipedir import load_pipeline
from pocketdiff.runtime.policies import exit_levels, make_policy
from pocketdiff.runtime.sampler import RuntimePipeline
from pocketdiff.runtime.schedulers import scheduler_from_config
from pocketdiff.toyworld import TOY_TEACHER_DIR

TEACHER = Path(TOY_TEACHER_DIR) / "pipeline"
OUT = Path("build/adadiff")
DOCS = Path("docs")
GUIDANCE = 2.0  # the toy teacher's evaluation guidance (docs/toy_teacher.md)


@dataclass
class Setting:
    scheduler: str
    steps: int
    variants: tuple[str, ...]  # trainings calibrated and evaluated at this setting (besides "weighted")
    curve_macs: tuple[float, ...] = ()  # besides the chosen threshold, evaluate the curve point nearest these MACs

    @property
    def slug(self) -> str:
        return f"{self.scheduler}-{self.steps}"


@dataclass
class ToyAdaDiff:
    """The experiment, committed."""

    trainings: dict[str, AdaDiffTrainConfig] = field(default_factory=lambda: {
        "weighted": AdaDiffTrainConfig(steps=5000),
        "plain": AdaDiffTrainConfig(steps=5000, uncertainty_weighting=False),  # the ablation
        "backbone": AdaDiffTrainConfig(steps=1000, train_backbone=True, lr=2e-4),  # the unfrozen option
    })
    settings: tuple[Setting, ...] = (Setting("ddim", 25, ("plain",)),
                                     Setting("dpm++2m", 8, ("plain", "backbone"), curve_macs=(0.85,)))
    calibrate: AdaDiffCalibrateConfig = field(default_factory=lambda: AdaDiffCalibrateConfig(
        guidance=GUIDANCE, n_prompts=64, n_thresholds=12, rule="macs", target_macs=0.70))
    n_eval: int = 1000
    n_hist: int = 200  # val prompts (the evaluation's first) whose traces give the exit histogram
    seed: int = 0
    bench_repeat: int = 200


def _eval(path: Path, bundle: Path, policy, gen: GenerateConfig, n: int) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    result, _ = evaluate_source(gen, "toy-val", n, bundle_dir=bundle, policy=policy)
    keep = {k: result[k] for k in ("n", "fid", "clip_score", "attribute_accuracy", "steps", "guidance", "scheduler")}
    keep["accuracy_rephrased"] = result["rephrased"]["attribute_accuracy"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keep, indent=1) + "\n")
    return keep


def trained(exp: ToyAdaDiff, name: str) -> Path:
    out = OUT / name / "pipeline"
    if not out.is_dir():
        adadiff_train(TEACHER, out, exp.trainings[name], OUT / name / "work")
    return out


def calibrated(exp: ToyAdaDiff, name: str, s: Setting, target_macs: float) -> tuple[Path, dict]:
    """(the calibrated pipeline, its curve file) of training ``name`` at setting ``s``."""
    work = OUT / s.slug / name
    out = work / "calibrated"
    cfg = AdaDiffCalibrateConfig(**{**asdict(exp.calibrate), "scheduler": s.scheduler, "sampler_steps": s.steps,
                                    "target_macs": target_macs})
    if not out.is_dir():
        adadiff_calibrate(trained(exp, name), out, cfg, work / "calibrate.work")
    return out, json.loads((work / "calibrate.work" / "curve.json").read_text())


def bundle_of(pipeline: Path, s: Setting) -> Path:
    out = pipeline.parent / "bundle"
    if not out.is_dir():
        write_bundle(pipeline, out, ExportConfig(targets=("onnx",), steps=s.steps, guidance=GUIDANCE,
                                                 scheduler=s.scheduler))
    return out


def histogram(path: Path, bundle: Path, gen: GenerateConfig, n: int) -> dict:
    """Per step, how many of the first ``n`` evaluation prompts stopped at each level (0: the full UNet)."""
    if path.is_file():
        return json.loads(path.read_text())
    rt = RuntimePipeline.from_bundle(bundle, "onnx")
    levels = []
    for i, item in enumerate(prompt_set("toy-val", n, gen.seed)):
        res = rt.generate(item.prompt, steps=gen.steps, guidance=gen.guidance, seed=gen.seed + i,
                          scheduler=gen.scheduler, truncate=True)
        levels.append(exit_levels(res.trace, gen.steps))
    lv = np.array(levels)
    out = {"n": n, "timesteps": _timesteps(rt, gen),
           "counts": [[int((lv[:, i] == k).sum()) for k in range(int(lv.max()) + 1)] for i in range(gen.steps)]}
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def _timesteps(rt: RuntimePipeline, gen: GenerateConfig) -> list[float]:
    sched = scheduler_from_config(rt.scheduler_config, gen.scheduler)
    sched.set_timesteps(gen.steps)
    return [float(t) for t in sched.timesteps]


def unet_ms_per_image(bench: dict, side: str) -> float:
    """A side's UNet time per image: per trace, its UNet calls (any segment or head) x that side's medians of those
    calls; the mean over the traced prompts."""
    medians = {(r["component"], r["batch"]): r[side]["median_ms"] for r in bench["components"] if side in r}
    per = [sum(medians[(c["role"], c["batch"])] for c in trace if c["role"].startswith("unet"))
           for trace in bench["traces"][side]]
    return float(np.mean(per))


def nearest(curve: list[dict], macs: float) -> dict:
    return min(curve, key=lambda p: abs(p["macs"] - macs))


def with_threshold(bundle: Path, threshold: float):
    params = json.loads((bundle / "manifest.json").read_text())["sampler"]["params"]
    return make_policy("adadiff", {**params, "threshold": float(threshold)})


def run_setting(exp: ToyAdaDiff, s: Setting) -> dict:
    work = OUT / s.slug
    gen = GenerateConfig(prompt="", steps=s.steps, guidance=GUIDANCE, seed=exp.seed, scheduler=s.scheduler).validate()
    pipe, curve = calibrated(exp, "weighted", s, exp.calibrate.target_macs)
    bundle = bundle_of(pipe, s)
    chosen = curve["chosen"]
    rows = {"full": {**_eval(work / "eval" / "full.json", bundle, make_policy("cfg"), gen, exp.n_eval), "macs": 1.0},
            "weighted": {**_eval(work / "eval" / "weighted.json", bundle, None, gen, exp.n_eval),
                         "macs": chosen["macs"], "threshold": chosen["threshold"], "proxy": chosen["proxy"]}}
    for m in s.curve_macs:
        p = nearest(curve["curve"], m)
        rows[f"weighted @{p['threshold']:.4f}"] = {**_eval(work / "eval" / f"weighted_{p['threshold']:.4f}.json", bundle,
                                                           with_threshold(bundle, p["threshold"]), gen, exp.n_eval),
                                                     "macs": p["macs"], "threshold": p["threshold"], "proxy": p["proxy"]}
    variants = {}
    for name in s.variants:  # calibrated to the weighted heads' compute: the same-compute comparison
        vpipe, vcurve = calibrated(exp, name, s, chosen["macs"] + 1e-9)
        vbundle = bundle_of(vpipe, s)
        c = vcurve["chosen"]
        rows[name] = {**_eval(work / "eval" / f"{name}.json", vbundle, None, gen, exp.n_eval), "macs": c["macs"],
                      "threshold": c["threshold"], "proxy": c["proxy"]}
        variants[name] = vcurve
    hist = histogram(work / "histogram.json", bundle, gen, exp.n_hist)
    bench_file = work / "bench_compare.json"
    if bench_file.is_file():
        bench = json.loads(bench_file.read_text())
    else:
        bench = compare([Side("bundle", bundle, "onnx", s.steps, GUIDANCE, "cfg"),
                         Side("bundle", bundle, "onnx", s.steps, GUIDANCE, "adadiff")],
                        threads=2, warmup=5, repeat=exp.bench_repeat)
        bench_file.write_text(json.dumps(bench, indent=1) + "\n")
    ms_full, ms_ada = unet_ms_per_image(bench, "A"), unet_ms_per_image(bench, "B")
    full, ours = rows["full"], rows["weighted"]
    t = {"macs_reduction": 1 - ours["macs"], "unet_ms_reduction": 1 - ms_ada / ms_full,
         "fid_ratio": ours["fid"] / full["fid"],
         "accuracy_delta_points": 100 * (ours["attribute_accuracy"] - full["attribute_accuracy"])}
    t["met"] = {"MACs >= 30% lower": t["macs_reduction"] >= 0.30,
                "onnxruntime UNet time >= 25% lower": t["unet_ms_reduction"] >= 0.25,
                "FID <= 1.05x full": t["fid_ratio"] <= 1.05,
                "accuracy within 1 point": abs(t["accuracy_delta_points"]) <= 1.0}
    macs = role_macs(pipe, [r for r in pipeline_roles(load_pipeline(pipe)) if r.startswith("unet")])
    return {"scheduler": s.scheduler, "steps": s.steps, "guidance": GUIDANCE, "rows": rows, "targets": t,
            "curve": curve, "variant_curves": variants, "histogram": hist, "macs_per_call": macs,
            "unet_ms_per_image": {"full": ms_full, "adadiff": ms_ada}, "bench_components": bench["components"],
            "bench_traces_levels": [exit_levels(tr, s.steps) for tr in bench["traces"]["B"]],
            "bench_machine": bench["machine"]}


def main() -> None:
    exp = ToyAdaDiff()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip", action="append", default=[], choices=[s.slug for s in exp.settings],
                    help="leave a setting out of this run (the report says so)")
    args = ap.parse_args()
    torch.manual_seed(0)
    logs = {}
    for name in exp.trainings:
        trained(exp, name)
        logs[name] = [json.loads(line) for line in (OUT / name / "work" / "log.jsonl").read_text().splitlines()]
    result = {"experiment": {"n_eval": exp.n_eval, "n_hist": exp.n_hist, "seed": exp.seed,
                             "bench_repeat": exp.bench_repeat, "calibrate": asdict(exp.calibrate),
                             "trainings": {k: asdict(v) for k, v in exp.trainings.items()}},
              "train_logs": logs, "settings": {}}
    for s in exp.settings:
        if s.slug in args.skip:
            result["settings"][s.slug] = {"skipped": f"left out of this run (--skip {s.slug})"}
            continue
        result["settings"][s.slug] = run_setting(exp, s)
    write_report(result, DOCS / "adadiff_toy")


if __name__ == "__main__":
    main()
