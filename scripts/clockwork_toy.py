"""Clockwork on the toy teacher (issue 23): the adaptor trained at 8 DPM-Solver++ steps (the seed's setting), the
clock period searched against quality (periods 1-4, trained adaptor and identity adaptor, 1000 toy-val prompts
and seeds each), the chosen clock's compute from one `bench compare` run's traces; then the same on the shipped
student at its pinned steps (4 DDIM, guidance embedded). Writes docs/clockwork_toy.{md,json} and its plots.

    make clockwork-toy        # = python scripts/clockwork_toy.py

Every piece is cached under build/clockwork/ (training resumes from its checkpoint, each evaluation from its JSON):
a rerun redoes only what is missing. The student is the pipeline `make toy-full` made the shipped student bundle
from (build/toy-full/steps); without it the student part is skipped and the report says so.

"Without Clockwork" is the same bundle's plain `unet` role under the UNet's own policy (cfg for the teacher,
guidance_embedded for the student), with the same sampler, steps, guidance, prompts and seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from clockwork_toy_report import write_report  # the sibling script: tables and plots

from pocketdiff.benchmarks.compare import Side, compare
from pocketdiff.benchmarks.flops import count_flops
from pocketdiff.benchmarks.quality import evaluate_source
from pocketdiff.architectures.clockwork_unet import as_clockwork_unet
from pocketdiff.distill.clockwork_train import ClockworkTrainConfig, clockwork_train
from pocketdiff.distill.data import captioned_samples
from pocketdiff.export.bundle import ExportConfig, write_bundle
from pocketdiff.export.components import component_specs
from pocketdiff.generate import GenerateConfig
from pocketdiff.pipedir import StageRecord, load_pipeline, read_history, write_pipeline
from pocketdiff.runtime.policies import CW_FULL, CW_LIGHT, UNET, clock_schedule, make_policy
from pocketdiff.runtime.sampler import VAE_DECODER, RuntimePipeline
from pocketdiff.runtime.sessions import ShapeSession
from pocketdiff.toyworld import TOY_TEACHER_DIR

TEACHER = Path(TOY_TEACHER_DIR) / "pipeline"
STUDENT = Path("build/toy-full/steps")  # the pipeline of the shipped student bundle (make toy-full)
OUT = Path("build/clockwork")
DOCS = Path("docs")
GUIDANCE = 2.0  # the toy teacher's evaluation guidance (docs/toy_teacher.md)


@dataclass
class Setting:
    name: str
    pipeline: Path
    train: ClockworkTrainConfig
    periods: tuple[int, ...]  # evaluated, with 1 (every step full)
    native: str  # the policy "without Clockwork" runs on the same bundle


@dataclass
class ToyClockwork:
    """The experiment, committed: per setting one adaptor training, the period sweep, the ablation."""

    settings: tuple[Setting, ...] = field(default_factory=lambda: (
        Setting("teacher dpm++2m-8", TEACHER, ClockworkTrainConfig(
            adaptor_blocks=3, scheduler="dpm++2m", sampler_steps=8, guidance=GUIDANCE, period=3, n_trajectories=2000,
            steps=3000, batch_size=64, w_feature=0.1), periods=(2, 3, 4), native="cfg"),
        Setting("student ddim-4", STUDENT, ClockworkTrainConfig(  # its pinned 4 steps and own sampler
            adaptor_blocks=3, guidance=GUIDANCE, max_gap=2, period=3, n_trajectories=2000, steps=3000, batch_size=64,
            w_feature=0.1),
            periods=(2,), native="guidance_embedded"),  # at 4 steps period 3 lights [1, 2]: the searched set
    ))
    n_eval: int = 1000
    n_search: int = 64  # val captions the clock search's proxy runs on
    macs_target: float = 0.70  # the search keeps light-step sets at or under this fraction of the UNet MACs
    seed: int = 0
    bench_repeat: int = 200  # toy calls take milliseconds; fewer repeats move the ratio by several points run to run


def slug(s: Setting) -> str:
    return s.name.split()[0] + "-" + s.name.split()[1]


def _eval(path: Path, bundle: Path, policy, gen: GenerateConfig, n: int) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    result, _ = evaluate_source(gen, "toy-val", n, bundle_dir=bundle, policy=policy)
    keep = {k: result[k] for k in ("n", "fid", "clip_score", "attribute_accuracy", "steps", "guidance", "scheduler")}
    keep["accuracy_rephrased"] = result["rephrased"]["attribute_accuracy"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keep, indent=1) + "\n")
    return keep


def graph_macs(pipeline: Path, batch: int) -> dict[str, int]:
    """MACs of one call of the plain, full and light graphs at ``batch`` (counted on the exported wrappers)."""
    pipe = load_pipeline(pipeline)
    specs = {s.name: s for s in component_specs(pipe, batch, roles=[UNET, CW_FULL, CW_LIGHT])}
    return {name: count_flops(s.module, s.example).macs for name, s in specs.items()}


def unet_ms_per_image(bench: dict, side: str) -> float:
    """UNet time per image of one side: its trace's UNet calls (any graph) x its medians of those calls."""
    medians = {(r["component"], r["batch"]): r[side]["median_ms"] for r in bench["components"] if side in r}
    trace = bench["traces"][side][0]
    return sum(medians[(c["role"], c["batch"])] for c in trace if c["role"] in (UNET, CW_FULL, CW_LIGHT))


def final_latents(rt: RuntimePipeline, policy, prompts: list[str], gen: GenerateConfig) -> np.ndarray:
    """[N, C, h, w]: the runtime loop's latents after the last step, prompt i at seed i."""
    run, out = rt.with_sessions(rt.sessions, policy), []
    for i, p in enumerate(prompts):
        last = {}
        run.generate(p, steps=gen.steps, guidance=gen.guidance, seed=i, truncate=True, scheduler=gen.scheduler,
                     on_step=lambda k, x: last.__setitem__("x", x))
        out.append(last["x"][0])
    return np.stack(out)


def search_clock(path: Path, bundle: Path, gen: GenerateConfig, per_image, exp: ToyClockwork) -> dict:
    """Every set of light steps (the first and last full), scored on ``n_search`` val captions by the final
    latents' squared distance to every-step-full, relative to their mean square; the chosen set: the lowest
    proxy among those at or under ``macs_target`` of the UNet MACs (none there: the cheapest)."""
    if path.is_file():
        return json.loads(path.read_text())
    rt = RuntimePipeline.from_bundle(bundle, "onnx", policy=make_policy("clockwork", {"period": 2}))
    dec = rt.sessions[VAE_DECODER]
    rt = rt.with_sessions({**rt.sessions, VAE_DECODER: ShapeSession(dec.inputs, dec.outputs)})
    prompts = list(captioned_samples("toyworld", exp.n_search, exp.seed + 7, "val").captions)
    ref = final_latents(rt, make_policy("clockwork", {"period": 1}), prompts, gen)
    middle, points = range(1, gen.steps - 1), []
    for k in range(1, len(middle) + 1):
        for light in itertools.combinations(middle, k):
            x = final_latents(rt, make_policy("clockwork", {"light_steps": list(light)}), prompts, gen)
            points.append({"light_steps": list(light), "proxy": float(np.mean((x - ref) ** 2) / np.mean(ref ** 2)),
                           "macs_ratio": per_image(list(light)) / per_image([])})
    ok = [p for p in points if p["macs_ratio"] <= exp.macs_target]
    chosen = min(ok, key=lambda p: p["proxy"]) if ok else min(points, key=lambda p: (p["macs_ratio"], p["proxy"]))
    result = {"n_prompts": exp.n_search, "macs_target": exp.macs_target, "points": points, "chosen": chosen}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def with_clock(trained: Path, out: Path, light_steps: list[int]) -> Path:
    """The trained pipeline with the searched clock in its UNet's schedule (the adaptor and the pins unchanged)."""
    if out.is_dir():
        return out
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(trained)
    c = pipe.unet.config
    unet = as_clockwork_unet(pipe.unet, c.clockwork_boundary, c.clockwork_adaptor,
                             {**c.clockwork_schedule, "light_steps": light_steps},
                             adaptor_state=pipe.unet.adaptor.state_dict())
    shipped = StableDiffusionPipeline(**{**pipe.components, "unet": unet}, requires_safety_checker=False)
    record = StageRecord("clock search (scripts/clockwork_toy.py)", {"light_steps": light_steps})
    return write_pipeline(shipped, out, [*read_history(trained), record])


def run_setting(exp: ToyClockwork, s: Setting) -> dict:
    work = OUT / slug(s)
    trained, identity = work / "trained", work / "identity"
    if not trained.is_dir():
        clockwork_train(s.pipeline, trained, s.train, work / "train.work")
    if not identity.is_dir():
        clockwork_train(s.pipeline, identity, replace(s.train, adaptor="identity", steps=0), work / "identity.work")
    sched = load_pipeline(trained).unet.config.clockwork_schedule
    steps, guidance, scheduler = sched["steps"], sched["guidance"], sched["scheduler"]
    bundles = {}
    for kind, src in (("trained", trained), ("identity", identity)):
        bundles[kind] = work / f"bundle_{kind}"
        if not bundles[kind].is_dir():
            write_bundle(src, bundles[kind], ExportConfig(targets=("onnx",), steps=steps, guidance=guidance,
                                                           scheduler=scheduler))
    gen = GenerateConfig(prompt="", steps=steps, guidance=guidance, seed=exp.seed, scheduler=scheduler).validate()
    batch = 2 if s.native == "cfg" else 1
    macs = graph_macs(trained, batch)

    def per_image(clock) -> int:  # a period, or a list of light steps
        flags = clock_schedule(steps, clock) if isinstance(clock, int) else clock_schedule(steps, 1, clock)
        return sum(macs[CW_LIGHT if light else UNET] for light in flags)

    rows = {"without": {**_eval(work / "eval" / "without.json", bundles["trained"], make_policy(s.native), gen,
                                exp.n_eval), "period": None, "macs": per_image(1)}}
    for kind in ("trained", "identity"):
        for p in (1, *s.periods) if kind == "trained" else s.periods:
            rows[f"{kind} p{p}"] = {**_eval(work / "eval" / f"{kind}_p{p}.json", bundles[kind],
                                            make_policy("clockwork", {"period": p}), gen, exp.n_eval),
                                    "period": p, "macs": per_image(p)}
    search = search_clock(work / "search.json", bundles["trained"], gen, per_image, exp)
    light = search["chosen"]["light_steps"]
    for kind in ("trained", "identity"):
        rows[f"{kind} searched"] = {**_eval(work / "eval" / f"{kind}_searched.json", bundles[kind],
                                            make_policy("clockwork", {"light_steps": light}), gen, exp.n_eval),
                                    "period": None, "light_steps": light, "macs": per_image(light)}
    shipped = work / "bundle_shipped"  # the trained adaptor with the searched clock in its manifest
    if not shipped.is_dir():
        write_bundle(with_clock(trained, work / "shipped", light), shipped,
                     ExportConfig(targets=("onnx",), steps=steps, guidance=guidance, scheduler=scheduler))
    bench_file = work / "bench_compare_shipped.json"
    if bench_file.is_file():
        bench = json.loads(bench_file.read_text())
    else:
        bench = compare([Side("bundle", shipped, "onnx", steps, guidance, s.native),
                         Side("bundle", shipped, "onnx", steps, guidance, "clockwork")],
                        threads=2, warmup=5, repeat=exp.bench_repeat)
        bench_file.write_text(json.dumps(bench, indent=1) + "\n")
    chosen, without = rows["trained searched"], rows["without"]
    ms_without, ms_clockwork = unet_ms_per_image(bench, "A"), unet_ms_per_image(bench, "B")
    t = {"macs_reduction": 1 - chosen["macs"] / without["macs"], "unet_ms_reduction": 1 - ms_clockwork / ms_without,
         "fid_ratio": chosen["fid"] / without["fid"],
         "accuracy_delta_points": 100 * (chosen["attribute_accuracy"] - without["attribute_accuracy"])}
    t["met"] = {"MACs >= 30% lower": t["macs_reduction"] >= 0.30,
                "onnxruntime UNet time >= 25% lower": t["unet_ms_reduction"] >= 0.25,
                "FID <= 1.05x without": t["fid_ratio"] <= 1.05,
                "accuracy within 1 point": abs(t["accuracy_delta_points"]) <= 1.0,
                "trained beats identity at the shipped clock (FID and accuracy)":
                    chosen["fid"] < rows["identity searched"]["fid"]
                    and chosen["attribute_accuracy"] > rows["identity searched"]["attribute_accuracy"]}
    t["trained_beats_identity"] = {tag: {"fid": rows[f"trained {tag}"]["fid"] < rows[f"identity {tag}"]["fid"],
                                         "accuracy": rows[f"trained {tag}"]["attribute_accuracy"]
                                         > rows[f"identity {tag}"]["attribute_accuracy"]}
                                   for tag in (*(f"p{p}" for p in s.periods), "searched")}
    log = [json.loads(line) for line in (work / "train.work" / "log.jsonl").read_text().splitlines()]
    return {"pipeline": str(s.pipeline), "train": asdict(s.train), "schedule": sched, "native_policy": s.native,
            "macs_per_call": macs, "call_batch": batch, "rows": rows, "targets": t, "train_log": log,
            "unet_ms_per_image": {"without": ms_without, "clockwork": ms_clockwork},
            "bench_components": bench["components"], "bench_machine": bench["machine"],
            "search": search, "light_steps": light}


def main() -> None:
    exp = ToyClockwork()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip", action="append", default=[], choices=[slug(s) for s in exp.settings],
                    help="leave a setting out of this run (the report says so)")
    args = ap.parse_args()
    torch.manual_seed(0)
    result = {"experiment": {"n_eval": exp.n_eval, "seed": exp.seed, "bench_repeat": exp.bench_repeat},
              "settings": {}}
    for s in exp.settings:
        if not (s.pipeline / "model_index.json").is_file():
            result["settings"][s.name] = {"skipped": f"{s.pipeline} is missing (make toy-full makes it)"}
            continue
        if slug(s) in args.skip:
            result["settings"][s.name] = {"skipped": f"left out of this run (--skip {slug(s)})"}
            continue
        result["settings"][s.name] = run_setting(exp, s)
    write_report(result, DOCS / "clockwork_toy")


if __name__ == "__main__":
    main()
