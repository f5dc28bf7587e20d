"""SD1.5 results page: SD1.5 at 50 CFG steps against the student architecture at 8 steps, at 512² on this
machine, fp32 and int8: per-component latency, cold start, memory, FLOPs; one side-by-side run with end to end
composed from each side's call trace; peak memory of one whole image; int8 parity; the phone projection.

    make bench-sd15        # = python scripts/sd15_benchmark.py

Random weights (latency, FLOPs and memory do not depend on them). The pipelines, bundles and optimum's export are
built once under build/bench (about an hour the first time on 2 cores). Each section's result is kept in
build/bench/sd15_record.json as soon as it is measured, so a rerun after a kill measures only what is missing
(``--fresh`` starts over). Writes docs/sd15_benchmark.md, .json and .html (``scripts/sd15_page.py`` renders
them). A record, not a timed test.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sd15_page import markdown, write_html
from tqdm import tqdm

from pocketdiff.benchmarks.baselines import optimum_export, optimum_info
from pocketdiff.benchmarks.compare import Side, compare
from pocketdiff.benchmarks.components import arch_sources, bench_components
from pocketdiff.benchmarks.generation_worker import generation_peak
from pocketdiff.benchmarks.projection import calibrate, project_arch
from pocketdiff.pipedir import atomic_output_file
from pocketdiff.runtime.bundle import load_bundle

TEACHER, STUDENT = "sd15", "sd15-student"
TEACHER_STEPS, STUDENT_STEPS, GUIDANCE = 50, 8, 7.5
CALIBRATION_PROMPTS = 4  # int8: activations calibrated on 4 prompts x 8 steps (32 UNet samples, 4 decoder samples)


@dataclass(frozen=True)
class Source:
    """One built model set: an architecture on a backend, optionally int8 or with the pruned decoder."""

    arch: str
    backend: str
    quantize: str | None = None
    decoder_width: float | None = None

    @property
    def key(self) -> str:
        return "/".join([self.arch, self.backend] + ([self.quantize] if self.quantize else [])
                        + ([f"dec{self.decoder_width:g}"] if self.decoder_width else []))

    def build(self, resolution: int) -> tuple[Path, Path]:
        return arch_sources(self.arch, self.backend, resolution, decoder_width=self.decoder_width,
                            quantize=self.quantize, calibration=CALIBRATION_PROMPTS if self.quantize else 0)


@dataclass
class Plan:
    """What one run measures, in two phases (fp32, then int8): per phase the model sets benchmarked per component
    and a side-by-side run (each against the same A); then the whole-image memory runs."""

    bench: dict[str, list[Source]]
    sides: dict[str, list[tuple[Source, str, int]]]
    memory: list[tuple[Source, int]]


def plan(teacher: str, student: str, extended: bool = True) -> Plan:
    """Two side-by-side runs. ``compare``: A is diffusers eager, against SD1.5 on pocketdiff's onnxruntime, optimum
    and the student on onnxruntime and ExecuTorch (``extended``: SD1.5 on ExecuTorch and the student with the
    pruned decoder too). ``compare_ort``: A is SD1.5 on pocketdiff's onnxruntime, against the student fp32 and int8
    on both backends, so the headline ratios come from A's own pairs. (A run cannot hold two SD1.5 onnxruntime
    UNets at once: SD1.5 on pocketdiff's onnxruntime and optimum's in one pair ran out of 24 GB.)"""
    sd15_ort = (Source(teacher, "onnx"), "bundle", TEACHER_STEPS)
    fp32 = [Source(student, "onnx"), Source(student, "executorch")]
    int8 = [Source(student, "onnx", "int8")] + ([Source(student, "executorch", "int8")] if extended else [])
    pruned = Source(student, "onnx", decoder_width=0.5)
    return Plan(
        bench={"compare_ort": [Source(teacher, "torch"), Source(teacher, "onnx"), Source(teacher, "executorch"),
                               *fp32, *int8], "compare": []},
        sides={"compare_ort": [sd15_ort, *[(x, "bundle", STUDENT_STEPS) for x in (fp32[0], *int8)]]
               + ([(fp32[1], "bundle", STUDENT_STEPS)] if extended else []),
               "compare": [(Source(teacher, "torch"), "pipeline", TEACHER_STEPS), sd15_ort,
                           (Source(teacher, "optimum"), "pipeline", TEACHER_STEPS),
                           *[(x, "bundle", STUDENT_STEPS) for x in fp32]]
               + ([(Source(teacher, "executorch"), "bundle", TEACHER_STEPS), (pruned, "bundle", STUDENT_STEPS)]
                  if extended else [])},
        # SD1.5 at 2 steps: its peak does not depend on them
        memory=[(x, STUDENT_STEPS) for x in (*int8, *fp32)] + [(Source(teacher, "onnx"), 2)])


def reuse_teacher_rows(record: dict, old: dict, teacher: str) -> None:
    """Take the teacher's per-component rows from an earlier record of this page (its backends keyed as before
    this script measured the student too), each marked with that record's date."""
    for backend, res in (old.get("bench") or {}).items():
        key = backend if "/" in backend else f"{teacher}/{backend}"
        if key.startswith(f"{teacher}/") and key not in record["bench"]:
            record["bench"][key] = {**res, "date": res.get("date", old.get("date"))}


def _save(path: Path, record: dict) -> None:
    with atomic_output_file(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")


def _side(src: Source, kind: str, steps: int, resolution: int) -> Side:
    if src.backend == "optimum":
        _, pipe_dir = arch_sources(src.arch, "torch", resolution)
        return Side("pipeline", pipe_dir, "optimum", steps, GUIDANCE)
    source, pipe_dir = src.build(resolution)
    return Side(kind, pipe_dir if kind == "pipeline" else source, src.backend, steps, GUIDANCE)


def _int8_parity(bench: list[Source], resolution: int) -> dict:
    """Per int8 component: its PSNR against the fp32 torch module, as the export gate recorded it, and how it was
    quantised (the manifest's record)."""
    out = {}
    for src in (s for s in bench if s.quantize):
        bundle = load_bundle(src.build(resolution)[0], verify=False)
        for c in bundle.components:
            if c.target == src.backend:
                out[f"{src.key}/{c.role}"] = {
                    "quantization": c.quantization, "meta": c.meta.get("quantization"),
                    "psnr_db": {b: min(o["psnr_db"] for o in per.values()) for b, per in (c.parity or {}).items()}}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=TEACHER, help="another architecture (tiny) only to try the script quickly")
    p.add_argument("--student", default=STUDENT, help="(tiny-student) likewise")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="docs/sd15_benchmark")
    p.add_argument("--record", default="build/bench/sd15_record.json", help="the resumable record of this run")
    p.add_argument("--fresh", action="store_true", help="discard the saved record and measure everything again")
    p.add_argument("--reuse-teacher", default=None, metavar="JSON",
                   help="take the teacher's per-component rows from an earlier docs/sd15_benchmark.json (dated)")
    p.add_argument("--no-baselines", action="store_true",
                   help="leave out the run with diffusers as A (diffusers, optimum, SD1.5 and the student on "
                        "onnxruntime; about 20 minutes); the page then shows that run from the --reuse-teacher record")
    p.add_argument("--note", default="", help="a sentence for the page about this run's conditions")
    p.add_argument("--short", action="store_true",
                   help="leave out SD1.5 on ExecuTorch, the pruned-decoder student, the student's ExecuTorch int8 "
                        "and its fp32 ExecuTorch pair with SD1.5 on onnxruntime (about 25 minutes less)")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="only re-render the .md and .html from a saved record (no measuring)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.render:
        record = json.loads(Path(args.render).read_text())
        out.with_suffix(".md").write_text(markdown(record))
        write_html(out.with_suffix(".html"), record)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    path = Path(args.record)
    record = {} if args.fresh or not path.exists() else json.loads(path.read_text())
    settings = {"resolution": args.resolution, "threads": args.threads, "warmup": args.warmup, "repeat": args.repeat}
    if record.get("settings") != settings:
        record = {"settings": settings, "started": time.strftime("%Y-%m-%d %H:%M"), "wall_s": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    todo = plan(args.teacher, args.student, not args.short)
    teacher_dir = arch_sources(args.teacher, "torch", args.resolution)[1]
    optimum_export(teacher_dir)
    record["optimum"] = optimum_info(teacher_dir)
    bench = record.setdefault("bench", {})
    if args.reuse_teacher:
        reuse_teacher_rows(record, json.loads(Path(args.reuse_teacher).read_text()), args.teacher)
    if args.no_baselines:
        todo.sides.pop("compare")
        if "compare" not in record and args.reuse_teacher:  # shown as the earlier run it is
            old = json.loads(Path(args.reuse_teacher).read_text())
            record["compare_earlier"] = {**old["compare"], "date": old["date"]}
    for section, sides_plan in todo.sides.items():
        for src in tqdm(todo.bench[section], desc=f"bench per component ({section})"):
            if src.key in bench:  # each model set is built once and cached under build/bench
                continue
            t0 = time.time()
            source, pipe_dir = src.build(args.resolution)
            bench[src.key] = {**bench_components(source, src.backend, args.threads, args.warmup, args.repeat,
                                                 pipeline_dir=pipe_dir), "date": time.strftime("%Y-%m-%d")}
            record["wall_s"][f"bench {src.key}"] = time.time() - t0
            _save(path, record)
        if section in record:
            continue
        t0 = time.time()
        sides = [_side(s, kind, steps, args.resolution) for s, kind, steps in sides_plan]
        with tqdm(total=3, desc=f"{section} (per component)") as bar:
            record[section] = compare(sides, args.threads, args.warmup, args.repeat,
                                      progress=lambda i, n: bar.update(1), pairwise=True)
        record[section]["side_sources"] = {n: s.key for n, (s, _, _) in zip(record[section]["sides"], sides_plan)}
        record["wall_s"][section] = time.time() - t0
        _save(path, record)
    memory = record.setdefault("memory", {})
    for src, steps in tqdm(todo.memory, desc="one image, peak RSS"):
        if src.key not in memory:
            memory[src.key] = generation_peak(src.build(args.resolution)[0], src.backend, steps, GUIDANCE,
                                              args.threads)
            _save(path, record)
    record["int8"] = _int8_parity(todo.bench["compare_ort"], args.resolution)
    int8_toy = Path("docs/int8_toy.json")
    record["int8_toy"] = json.loads(int8_toy.read_text()) if int8_toy.exists() else None
    spec = Path("docs/sd15_student_spec.json")
    record["student_spec"] = json.loads(spec.read_text()) if spec.exists() else None
    cal = calibrate()
    record["projection"] = {f"{arch}/{steps}/{prec}": project_arch(arch, steps, prec, calibration=cal)
                            for arch, steps, prec in ((args.teacher, TEACHER_STEPS, "w8a16"),
                                                      (args.student, STUDENT_STEPS, "w8a16"),
                                                      (args.student, STUDENT_STEPS, "fp16"))}
    record["machine"] = record["compare_ort"]["machine"]
    record["date"] = time.strftime("%Y-%m-%d")
    record["note"] = args.note
    _save(path, record)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(record))
    write_html(out.with_suffix(".html"), record)
    sys.stdout.write(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
