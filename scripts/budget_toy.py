"""BudgetFusion on the shipped toy student (issue 25): the budget-data table over S = {1, 2, 3, 4, 6, 8} (15000
toy-train prompts; 1000 toy-val prompts with their images), both predictor kinds trained and compared, the better
exported in the student's bundle, and four step choices compared on the toy-val prompts at equal mean perceptual
similarity to the 8-step images: a fixed count, the oracle, a random choice with the predictor's mean, the
predictor. Writes docs/budget_toy.{md,json} and its plots.

    make budget-toy        # = python scripts/budget_toy.py

The student is the pipeline `make toy-full` made the shipped student bundle from (build/toy-full/steps). Every
piece is cached under build/budget/ (the tables resume per chunk, the training from its checkpoints): a rerun redoes
only what is missing. The toy-val images are the budget-data table's (the torch path, the runtime's RNG latents);
the predictions and the timings are the bundle's, on onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from budget_toy_report import write_report  # the sibling script: tables and plots

from pocketdiff.benchmarks.components import bench_components
from pocketdiff.benchmarks.quality import EvalModels, evaluate_images, prompt_set
from pocketdiff.distill.budget_data import BudgetDataConfig, budget_data, load_table
from pocketdiff.distill.budget_train import BudgetTrainConfig, budget_train
from pocketdiff.export.bundle import ExportConfig, write_bundle
from pocketdiff.runtime.policies import STEP_BUDGET
from pocketdiff.runtime.policies.budget import HIDDEN_IN, QUALITY
from pocketdiff.runtime.sampler import RuntimePipeline
from pocketdiff.toyworld import TOY_TEACHER_DIR

STUDENT = Path("build/toy-full/steps")  # the pipeline of the shipped student bundle (make toy-full)
OUT = Path("build/budget")
DOCS = Path("docs")
GUIDANCE = 2.0  # the student's evaluation guidance (recipes/toy-full.toml)


@dataclass
class ToyBudget:
    """The experiment, committed."""

    data: BudgetDataConfig = field(default_factory=lambda: BudgetDataConfig(prompts="toy-train", n=15000,
                                                                            guidance=GUIDANCE))
    val: BudgetDataConfig = field(default_factory=lambda: BudgetDataConfig(prompts="toy-val", n=1000, guidance=GUIDANCE,
                                                                           keep_images=True))
    train: BudgetTrainConfig = field(default_factory=lambda: BudgetTrainConfig(steps=1000, val_fraction=0.2))
    fixed: tuple[int, ...] = (2, 3, 4, 6)  # operating points: each fixed count against the like-s preset
    headline: int = 4  # the student's pinned steps: the default preset like-4
    n_time: int = 100  # toy-val prompts timed on the runtime, fixed and auto alternating
    bench_repeat: int = 200
    seed: int = 0


def predictions(bundle: Path, prompts: list[str]) -> tuple[np.ndarray, object]:
    """The bundle's text encoder and step_budget on onnxruntime: predicted quality [N, K, M]; and the spec."""
    rt = RuntimePipeline.from_bundle(bundle, "onnx", threads=2)
    out = []
    for p in prompts:
        ids = np.asarray([rt.tokenizer(p, truncate=True).input_ids], dtype=np.int64)
        hidden = rt.sessions["text_encoder"].run({"input_ids": ids})["last_hidden_state"]
        out.append(rt.sessions[STEP_BUDGET].run({HIDDEN_IN: hidden})[QUALITY][0])
    return np.stack(out), rt.budget


def sweep(choose, d: np.ndarray, counts: np.ndarray, params) -> list[tuple[float, float, float]]:
    """(param, mean steps, mean distance) of a rule ``choose(param) -> index per prompt`` over ``params``."""
    rows = np.arange(len(d))
    return [(float(p), float(counts[k].mean()), float(d[rows, k].mean())) for p in params for k in [choose(p)]]


def matched(points, fixed_d: float):
    """The point with the fewest mean steps whose mean distance is at most ``fixed_d`` (equal or better)."""
    ok = [p for p in points if p[2] <= fixed_d + 1e-12]
    return min(ok, key=lambda p: (p[1], p[2])) if ok else None


def compare_choices(cfg: ToyBudget, spec, pred: np.ndarray, val: dict, models, items) -> dict:
    """Fixed, oracle, random and predictor (the shipped preset; and its target re-matched on these prompts) at each
    fixed step count's mean distance; FID and accuracy of every choice's images."""
    counts = np.array(spec.step_counts)
    j = list(val["metrics"]).index("dreamsim")
    d, images = val["curves"][:, :, j], val["images"]
    rows = np.arange(len(d))
    index = lambda steps: np.searchsorted(counts, steps)  # noqa: E731  step counts -> indices into S
    pred_rule = lambda tau: index(spec.choose(pred, {"dreamsim": tau}))  # noqa: E731  the runtime's rule
    oracle_rule = lambda tau: index(spec.choose(val["curves"], {"dreamsim": tau}))  # noqa: E731  on the true curves
    taus = np.unique(np.concatenate([np.quantile(pred[:, :, j], np.linspace(0, 1, 801)), [np.inf]]))
    pred_curve = sweep(pred_rule, d, counts, taus)
    oracle_curve = sweep(oracle_rule, d, counts, np.unique(np.concatenate([np.quantile(d, np.linspace(0, 1, 1601)),
                                                                           [np.inf]])))
    rng = np.random.default_rng(cfg.seed)
    cache: dict[bytes, dict] = {}

    def quality(k: np.ndarray) -> dict:
        key = k.tobytes()
        if key not in cache:
            r = evaluate_images(models, items, images[rows, k], seed=cfg.seed)
            acc = r["attributes"]
            cache[key] = {"fid": r["fid"], "attribute_accuracy": r["attribute_accuracy"], "clip_score": r["clip_score"],
                          "accuracy_by_kind": {g: acc[f"kind={g}"]["all"] for g in ("single", "pair")}}
        return cache[key]

    def entry(k: np.ndarray, **extra) -> dict:
        return {"mean_steps": float(counts[k].mean()), "mean_dreamsim": float(d[rows, k].mean()),
                "steps_histogram": {int(s): int((counts[k] == s).sum()) for s in counts}, **quality(k), **extra}

    points = {}
    for s in cfg.fixed:
        kf = np.full(len(d), list(counts).index(s))
        fixed = entry(kf)
        preset = spec.presets[f"like-{s}"]
        k_preset = index(spec.choose(pred, preset))
        tau_m, _, _ = matched(pred_curve, fixed["mean_dreamsim"])
        k_pred = pred_rule(tau_m)
        tau_o, _, _ = matched(oracle_curve, fixed["mean_dreamsim"])
        k_oracle = oracle_rule(tau_o)
        k_random = rng.permutation(k_pred)  # the predictor's step counts, dealt at random: the same mean
        pt = {"fixed": fixed, "preset": entry(k_preset, target=preset),
              "predictor": entry(k_pred, target={"dreamsim": tau_m}), "oracle": entry(k_oracle, target={"dreamsim": tau_o}),
              "random": entry(k_random)}
        gap = pt["fixed"]["mean_steps"] - pt["oracle"]["mean_steps"]
        for name in ("preset", "predictor"):
            pt[name]["steps_saved"] = 1 - pt[name]["mean_steps"] / s
            pt[name]["gap_closed"] = (s - pt[name]["mean_steps"]) / gap if gap > 0 else None
        pt["oracle"]["steps_saved"] = 1 - pt["oracle"]["mean_steps"] / s
        groups = {"kind": val["kind"], "background": val["background"], "split": val["split"]}
        pt["by_group"] = {g: {str(v): {name: float(counts[k][vals == v].mean()) for name, k in
                                       (("fixed", kf), ("predictor", k_pred), ("oracle", k_oracle), ("preset", k_preset))}
                              | {"n": int((vals == v).sum())} for v in np.unique(vals)} for g, vals in groups.items()}
        points[str(s)] = pt
    return {"points": points, "curves": {"predictor": pred_curve[::8], "oracle": oracle_curve[::16],
                                         "fixed": [(s, s, float(d[:, k].mean())) for k, s in enumerate(counts)]}}


def time_runtime(cfg: ToyBudget, bundle: Path, prompts: list[str]) -> dict:
    """Per prompt, alternating: the fixed headline steps, then ``auto`` (the default preset), same seed; 2 threads."""
    rt = RuntimePipeline.from_bundle(bundle, "onnx", threads=2)
    rt.generate(prompts[0], steps=cfg.headline, guidance=GUIDANCE, seed=0)  # warm-up
    fixed, auto, chosen, budget_ms = [], [], [], []
    for i, p in enumerate(prompts):
        fixed.append(rt.generate(p, steps=cfg.headline, guidance=GUIDANCE, seed=i).timings["total_s"])
        res = rt.generate(p, steps="auto", guidance=GUIDANCE, seed=i)
        auto.append(res.timings["total_s"])
        chosen.append(res.steps)
        budget_ms.append(next(c.ms for c in res.trace if c.role == STEP_BUDGET))
    return {"n": len(prompts), "fixed_steps": cfg.headline, "preset": rt.budget.default_preset,
            "fixed_ms": 1000 * float(np.mean(fixed)), "auto_ms": 1000 * float(np.mean(auto)),
            "saved_ms_per_prompt": 1000 * float(np.mean(fixed) - np.mean(auto)),
            "auto_over_fixed": float(np.mean(auto) / np.mean(fixed)), "auto_mean_steps": float(np.mean(chosen)),
            "step_budget_ms_in_trace": float(np.median(budget_ms))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=str(DOCS / "budget_toy.json"))
    args = ap.parse_args()
    if not (STUDENT / "model_index.json").is_file():
        print(f"error: {STUDENT} is missing: run make toy-full first (it makes the shipped student)", file=sys.stderr)
        return 1
    cfg, t0 = ToyBudget(), time.time()
    train_table = budget_data(STUDENT, OUT / "data-train", cfg.data, OUT / "data-train.work", overwrite=True)
    val_table = budget_data(STUDENT, OUT / "data-val", cfg.val, OUT / "data-val.work", overwrite=True)
    piped = OUT / "student-budget"
    if not (piped / "step_budget" / "config.json").is_file():
        budget_train(STUDENT, piped, replace(cfg.train, data=str(train_table)), OUT / "student-budget.work",
                     overwrite=True)
    bundle = OUT / "bundle"
    if not (bundle / "manifest.json").is_file():
        write_bundle(piped, bundle, ExportConfig(targets=("onnx", "coreml", "executorch"), steps=cfg.headline,
                                                 guidance=GUIDANCE), overwrite=True)
    val = load_table(val_table)
    prompts = [str(p) for p in val["prompt"]]
    items = prompt_set("toy-val", cfg.val.n, cfg.val.seed)
    assert [it.prompt for it in items] == prompts
    pred, spec = predictions(bundle, prompts)
    models = EvalModels.load(TOY_TEACHER_DIR)
    result = {"config": json.loads(json.dumps(asdict(cfg), default=str)), "spec": spec.to_dict(),
              "train_report": json.loads((OUT / "student-budget.work" / "report.json").read_text()),
              "manifest_components": [{k: c[k] for k in ("role", "target", "parity", "meta")} for c in json.loads(
                  (bundle / "manifest.json").read_text())["components"] if c["role"] == STEP_BUDGET],
              "table": {"train_prompts": int(len(load_table(train_table)["prompt"])), "val_prompts": len(prompts),
                        "mean_curves": {m: val["curves"][:, :, i].mean(0).tolist() for i, m in enumerate(val["metrics"])}}}
    result.update(compare_choices(cfg, spec, pred, val, models, items))
    result["runtime"] = time_runtime(cfg, bundle, prompts[:cfg.n_time])
    result["bench"] = bench_components(bundle, "onnx", threads=2, warmup=10, repeat=cfg.bench_repeat)
    result["wall_time_s"] = time.time() - t0
    Path(args.json).write_text(json.dumps(result, indent=1, default=float) + "\n")
    write_report(result, DOCS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
