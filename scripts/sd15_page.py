"""Render docs/sd15_benchmark.md and .html from the record ``scripts/sd15_benchmark.py`` writes (no measuring).

    python scripts/sd15_benchmark.py --render docs/sd15_benchmark.json
"""

from __future__ import annotations

from pocketdiff.benchmarks.report import write_bench_report

TARGET_SPEEDUP = 25.0
TARGET_RSS_MB = 2500.0
TARGET_PSNR_DB = 30.0
LABELS = {"sd15/torch": "SD1.5, torch eager (diffusers)", "sd15/onnx": "SD1.5, onnxruntime (pocketdiff)",
          "sd15/executorch": "SD1.5, ExecuTorch XNNPACK (pocketdiff)", "sd15/optimum": "SD1.5, optimum ORT",
          "sd15-student/onnx": "student, onnxruntime fp32", "sd15-student/executorch": "student, ExecuTorch fp32",
          "sd15-student/onnx/int8": "student, onnxruntime int8 (static QDQ)",
          "sd15-student/executorch/int8": "student, ExecuTorch int8 (PT2E XNNPACK)",
          "sd15-student/onnx/dec0.5": "student, onnxruntime fp32, pruned decoder (0.5)"}


def _f(v, fmt=".1f"):
    return "-" if v is None else format(v, fmt)


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


SECTIONS = {"compare_ort": "A = SD1.5 onnxruntime", "compare": "A = diffusers"}
HEADLINE = "compare_ort"  # the run whose pairs give the targets' ratios (A: SD1.5 on pocketdiff's onnxruntime)


def _side_key(cmp_: dict, name: str) -> str:
    return cmp_["side_sources"][name]


def _row(cmp_: dict, n: str, run: str, headline: bool) -> str:
    e = cmp_["end_to_end"]
    key = _side_key(cmp_, n)
    calls = ", ".join(f"{k} ×{v:g}" for k, v in e[n]["calls"].items())
    x = e.get("speedup_vs_a", {}).get(n, 1.0 if n == "A" else None)
    target = ""
    if headline and key.startswith("sd15-student") and "e2e_ms" in e[n]:
        target = f"≥ {TARGET_SPEEDUP:g}×: {_met(x >= TARGET_SPEEDUP)}" if key.endswith("/onnx") else "reported"
    return (f"| {run} | {n}: {LABELS.get(key, key)} ({e[n]['steps']} steps) | {calls} | "
            f"{_f(e[n].get('e2e_ms', 0) / 1000)} | {_f(x, '.2f')}× | {target} |")


def headline(record: dict) -> list[str]:
    lines = ["## End to end: SD1.5 at 50 CFG steps against the student at 8 steps", "",
             ("Two `bench compare --pairwise` runs (below). In the first, A is SD1.5 on pocketdiff's onnxruntime "
              "bundle and the other sides are the student: the targets' ratios. In the second, A is diffusers eager "
              "and the other sides are SD1.5 on pocketdiff's onnxruntime, optimum and the student fp32 (two SD1.5 "
              "onnxruntime UNets in one pair, ours and optimum's, ran out of this machine's 24 GB, so SD1.5 on "
              "onnxruntime cannot be A there). " if "compare" in record else
              "One `bench compare --pairwise` run (below): A is SD1.5 on pocketdiff's onnxruntime bundle and the other "
              "sides are the student, fp32 and int8. ") + "Every other side alternates call by "
             "call with A, one pair loaded at a time, so each ratio comes from its own pair. A side's end to end is the sum over the calls of its call "
             "trace (a dry run of the runtime's sampler loop with the side's policy, steps and guidance) of its own "
             "measured median per (component, batch). SD1.5 runs PNDM (PLMS), whose 50 steps are 51 UNet calls "
             "(diffusers repeats its first timestep); the student runs the distilled sampler (DDIM, 8 calls) with the "
             "guidance embedding (one batch-1 pass per step, no negative prompt).", "",
             "| run | side | calls per image | end to end s | speed-up vs A | target |", "|---|---|---|---|---|---|"]
    for section, run in SECTIONS.items():
        if section in record:
            lines += [_row(record[section], n, run, section == HEADLINE) for n in record[section]["sides"]]
    cmp_ = record.get("compare") or record[HEADLINE]
    e = cmp_["end_to_end"]
    by_key = {_side_key(cmp_, n): n for n in cmp_["sides"]}
    et, st = by_key.get("sd15/executorch"), by_key.get("sd15-student/executorch")
    if et and st and "e2e_ms" in e[et] and "e2e_ms" in e[st]:
        lines += ["", f"Same backend on ExecuTorch: the student ({st}) is {e[et]['e2e_ms'] / e[st]['e2e_ms']:.1f}× faster "
                      f"than SD1.5 on ExecuTorch ({et}); that ratio crosses pairs (each side was timed against A), so "
                      "machine drift between pairs enters it."]
    return lines + [""] + requirement(record) + unpaired(record) + earlier(record)


def unpaired(record: dict) -> list[str]:
    """Student model sets benchmarked per component but in no pair of this run: end to end composed from their
    per-component medians with the student side's trace, against this run's A (not a pair: more drift)."""
    cmp_ = record[HEADLINE]
    paired = set(cmp_["side_sources"].values()) | set((record.get("compare") or {}).get("side_sources", {}).values())
    student = next((n for n in cmp_["sides"] if _side_key(cmp_, n) == "sd15-student/onnx"), None)
    if student is None:
        return []
    calls = cmp_["end_to_end"][student]["calls"]
    a = cmp_["end_to_end"]["A"]["e2e_ms"]
    lines = []
    for key, res in record["bench"].items():
        if not key.startswith("sd15-student") or key in paired:
            continue
        med = {f"{r['component']}@{r['batch']}": r["median_ms"] for r in res["components"]}
        if all(c in med for c in calls):
            e2e = sum(med[c] * k for c, k in calls.items())
            lines.append(f"- {LABELS.get(key, key)}: {e2e / 1000:.1f} s end to end from its per-component medians "
                         f"(same calls), {a / e2e:.1f}× less than this run's A; not a pair, so drift between the two "
                         "measurements enters the ratio.")
    return (["Model sets in no pair of this run (`--short`), composed from the per-component table:", ""] + lines + [""]
            if lines else [])


def earlier(record: dict) -> list[str]:
    """The baselines' run from the page's previous record, when this run left them out (``--no-baselines``)."""
    cmp_ = record.get("compare_earlier")
    if not cmp_:
        return []
    e = cmp_["end_to_end"]
    lines = ["### SD1.5's baselines (the previous record's run)", "",
             "This run left out the pairs with diffusers as A (`--no-baselines`); the previous record's side-by-side "
             f"run ({cmp_.get('date', 'dated in sd15_benchmark.json')}, same machine kind, A = diffusers "
             "eager) gives SD1.5's baselines against each other. Its end to end is the formula `text + 50 x UNet "
             "step + decoder` of that time (before traces; PNDM's 51st call not counted).", "",
             "| side | end to end s | speed-up vs A |", "|---|---|---|"]
    for n, side in cmp_["sides"].items():
        x = e.get("speedup_vs_a", {}).get(n, 1.0 if n == "A" else None)
        lines.append(f"| {n}: {side['label']} | {_f(e[n].get('e2e_ms', 0) / 1000)} | {_f(x, '.2f')}× |")
    return lines + [""]


def requirement(record: dict) -> list[str]:
    """What 25x asks of the student's UNet, from this run's own medians (the spec's budget comes from this)."""
    cmp_ = record[HEADLINE]
    e = cmp_["end_to_end"]
    st = [n for n in cmp_["sides"] if _side_key(cmp_, n) == "sd15-student/onnx"]
    if not st or "e2e_ms" not in e["A"] or "e2e_ms" not in e[st[0]]:
        return []
    n = st[0]
    med = {(r["component"], r["batch"], s): r[s]["median_ms"] for r in cmp_["components"] for s in ("A", n) if s in r}
    other = med[("text_encoder", 1, n)] * e[n]["calls"]["text_encoder@1"] + med[("vae_decoder", 1, n)]
    steps = int(e[n]["calls"]["unet@1"])
    need = (e["A"]["e2e_ms"] / TARGET_SPEEDUP - other) / steps
    have, sd15_b1 = med[("unet", 1, n)], med[("unet", 1, "A")]
    return [f"What {TARGET_SPEEDUP:g}× asks of the student's UNet, from this run's medians: SD1.5's end to end "
            f"({e['A']['e2e_ms'] / 1000:.1f} s) / {TARGET_SPEEDUP:g} leaves {e['A']['e2e_ms'] / TARGET_SPEEDUP / 1000:.2f} s; "
            f"less the student's text encoder and decoder ({other:.0f} ms), {steps} UNet steps may take "
            f"{need:.0f} ms each, {need / sd15_b1:.3f}× SD1.5's batch-1 UNet ({sd15_b1:.0f} ms). The student's UNet "
            f"took {have:.0f} ms ({have / sd15_b1:.3f}×): {'within' if have <= need else 'over'} that budget.", ""]


def per_component(record: dict) -> list[str]:
    s = record["settings"]
    teacher = record[HEADLINE]["side_sources"]["A"].split("/")[0]
    keys = sorted(record["bench"], key=lambda k: k.split("/")[0] != teacher)  # the teacher's rows first
    reused = any(record["bench"][k].get("date") != record.get("date") for k in keys)
    lines = ["## Per component, each case in its own process", "",
             f"`bench_components` per model set: median (min-max) of {s['repeat']} calls after {s['warmup']} warm-up "
             "call(s); cold start = session creation (torch: loading the pipeline folder) + first call; peak RSS is "
             "the whole child process (Python and imports included). GMACs from the PyTorch module on the meta "
             "device (matrix ops). The student is `arch=sd15-student`: SD1.5's UNet slimmed by "
             "`architectures/specs/sd15-student.json` with a guidance embedding (`time_cond_proj_dim` 256), and the "
             f"TAESD-style decoder (`AutoencoderTiny`, 64 channels) at {s['resolution']}²."
             + (" Rows dated before this run were taken over from this page's previous record (`--reuse-teacher`): "
                "SD1.5's own components did not change." if reused else ""), "",
             "| model set | component | batch | median ms (min-max) | cold start s | peak RSS MB | params M | GMACs | "
             "measured |", "|---|---|---|---|---|---|---|---|---|"]
    for key in keys:
        res = record["bench"][key]
        for r in res["components"]:
            f = r.get("flops") or {}
            lines.append(f"| {LABELS.get(key, key)} | {r['component']} | {r['batch']} | {r['median_ms']:.0f} "
                         f"({r['min_ms']:.0f}-{r['max_ms']:.0f}) | {r['cold_start_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                         f"{_f(f.get('params', 0) / 1e6)} | {_f(f.get('macs', 0) / 1e9)} | {res.get('date', '')} |")
    return lines + [""]


def side_by_side(record: dict) -> list[str]:
    lines = ["## Side by side", "",
             "`pocketdiff bench compare --pairwise`, A first; optimum is `ORTStableDiffusionPipeline` on optimum's own "
             f"export (`main_export`, opset {record['optimum']['opset']}), same thread count. Each ratio comes from its "
             "own pair (A's median within that pair is in the JSON, `a_median_ms_in_pair`); A's medians pool its "
             "samples over the pairs.", ""]
    for section, run in SECTIONS.items():
        if section not in record:
            continue
        cmp_ = record[section]
        names = list(cmp_["sides"])
        lines += [f"### {run}", ""] + [f"- {n}: {cmp_['sides'][n]['label']} = `{_side_key(cmp_, n)}`" for n in names]
        lines += ["", "| component | batch | " + " | ".join(f"{n} ms" for n in names) + " | "
                  + " | ".join(f"{n}/A" for n in names[1:]) + " |", "|---" * (2 + 2 * len(names) - 1) + "|"]
        for r in cmp_["components"]:
            cells = " | ".join(f"{r[n]['median_ms']:.0f}" if n in r else "-" for n in names)
            ratios = " | ".join(_f(r.get("ratio_vs_a", {}).get(n), ".3f") for n in names[1:])
            lines.append(f"| {r['component']} | {r['batch']} | {cells} | {ratios} |")
        lines.append("")
    return lines


def int8_section(record: dict) -> list[str]:
    lines = ["## int8", "",
             "Per int8 component, PSNR against the fp32 PyTorch module (random weights; the export's parity gate), "
             "and how it was quantised (the bundle manifest's record). Calibrated on the activations the component "
             "receives when the pipeline's own sampler runs calibration prompts.", "",
             "| component | quantisation | PSNR dB (per batch) | target |", "|---|---|---|---|"]
    for key, r in record.get("int8", {}).items():
        psnr = ", ".join(f"{b}: {v:.1f}" for b, v in r["psnr_db"].items())
        target = ""
        if key.endswith("onnx/int8/unet"):
            target = f"≥ {TARGET_PSNR_DB:g} dB: {_met(min(r['psnr_db'].values()) >= TARGET_PSNR_DB)}"
        meta = r.get("meta") or {}
        scheme = meta.get("scheme", r["quantization"]) if isinstance(meta, dict) else r["quantization"]
        lines.append(f"| `{key}` | {scheme} | {psnr} | {target} |")
    toy = record.get("int8_toy")
    if toy:
        lines += ["", "Quality at int8 is measured on the toy student (the SD1.5 weights here are random): "
                      "[int8_toy.md](int8_toy.md) (`make int8-toy`)."]
    return lines + [""]


def memory_section(record: dict) -> list[str]:
    lines = ["## Peak memory of one 512² image", "",
             "`benchmarks/generation_worker.py`: one generation in a fresh process holding the runtime and every "
             "session the bundle's policy uses (as an app would), peak RSS = `VmHWM` of that process. SD1.5 is run "
             "at 2 steps: its peak does not depend on the step count.", "",
             "| bundle | steps | load s | generate s | RSS after load MB | peak RSS MB | target |", "|---|---|---|---|---|---|---|"]
    for key, r in record.get("memory", {}).items():
        target = f"≤ {TARGET_RSS_MB:g} MB: {_met(r['peak_rss_mb'] <= TARGET_RSS_MB)}" if key.endswith("int8") else ""
        lines.append(f"| {LABELS.get(key, key)} | {r['steps']} | {r['load_s']:.1f} | {r['generate_s']:.1f} | "
                     f"{r['rss_after_load_mb']:.0f} | {r['peak_rss_mb']:.0f} | {target} |")
    return lines + [""]


def spec_section(record: dict) -> list[str]:
    spec = record.get("student_spec")
    if not spec:
        return []
    return ["## The student's UNet spec", "",
            f"`make sd15-student-spec` ([sd15_student_spec.json](sd15_student_spec.json)): the shipped SnapFusion-like "
            f"spec (11 blocks removed) evolved further on SD1.5's measured batch-1 per-block onnxruntime table "
            f"(`{spec['table']}`), removing the blocks the toy's evolution found redundant (mapped onto SD1.5 from the "
            f"lowest resolution up), largest measured saving first, to a budget of {spec['budget']:g} × SD1.5's UNet "
            f"({spec['budget_ms']:.0f} ms of {spec['unet_ms']:.0f} ms). Table estimate: shipped spec "
            f"{spec['shipped_estimate_ms']:.0f} ms, student spec {spec['final_estimate_ms']:.0f} ms "
            f"(budget {'met' if spec['budget_met'] else 'missed'}); added: "
            + ", ".join(f"`{s['block']}` ({s['saving_ms']:.0f} ms)" for s in spec["steps"]) + ".", ""]


def projection_section(record: dict) -> list[str]:
    proj = record.get("projection")
    if not proj:
        return []
    keys = list(proj)
    cal = proj[keys[0]]["calibration"]
    lines = ["## Phone projection", "",
             "`pocketdiff bench project` ([phone_projection.md](phone_projection.md): the model, every published "
             "figure with its source, the device profiles). A roofline per op from MACs and bytes, calibrated on "
             "Qualcomm AI Hub's SD1.5 W8A16 figures and apple/ml-stable-diffusion's iPhone/iPad figures. "
             f"**Leave-one-out error on the published figures: mean {cal['loo']['mean_abs_pct']:.1f}%, max "
             f"{cal['loo']['max_abs_pct']:.1f}%.** Each projection's band is its device class's largest "
             "leave-one-out error, as a factor either way.", "",
             "| device | " + " | ".join(f"`{k}` ms (band)" for k in keys) + " | student < 2 s |",
             "|---" * (len(keys) + 2) + "|"]
    devices = [d["device_label"] for d in proj[keys[0]]["devices"]]
    for i, dev in enumerate(devices):
        cells = " | ".join(f"{p['devices'][i]['e2e_ms']:.0f} ({p['devices'][i]['low_ms']:.0f}-"
                           f"{p['devices'][i]['high_ms']:.0f})" for p in proj.values())
        lines.append(f"| {dev} | {cells} | {proj[keys[1]]['devices'][i]['under_2000_ms']} |")
    return lines + [""]


def markdown(record: dict) -> str:
    m, s = record["machine"], record["settings"]
    lines = [f"# SD1.5 against the student at {s['resolution']}²: end to end, per component, int8, memory, phone "
             "projection", "",
             f"Generated by `make bench-sd15` (`scripts/sd15_benchmark.py`), started {record['started']}, finished "
             f"{record['date']}. Random weights at {s['resolution']}², {s['threads']} threads, on {m['cpu']} "
             f"({m['logical_cpus']} logical CPUs); latency, FLOPs and memory do not depend on weight values. This "
             "machine is shared and noisy: compare within one table. Every figure is in `sd15_benchmark.json`; the "
             "charts are in [`sd15_benchmark.html`](sd15_benchmark.html)." + (f" {record['note']}" if record.get("note")
                                                                              else ""), ""]
    lines += headline(record) + per_component(record) + side_by_side(record) + int8_section(record)
    lines += memory_section(record) + spec_section(record) + projection_section(record)
    lines += ["Wall time of each measured section (s): "
              + ", ".join(f"{k} {v:.0f}" for k, v in record["wall_s"].items()) + ".", ""]
    return "\n".join(lines)


def write_html(path, record: dict) -> None:
    write_bench_report(path, list(record["bench"].values()), record.get("compare") or record[HEADLINE],
                       title=f"SD1.5 vs the student at {record['settings']['resolution']}², random weights")
