"""`pocketdiff toy demo`: the shipped toy teacher's image grid and a quick eval on one HTML page."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pocketdiff.benchmarks.quality import EvalModels, evaluate_images, image_grid, prompt_set
from pocketdiff.benchmarks.report import png_data_uri, table_html, write_page
from pocketdiff.generate import GenerateConfig, generate_many
from pocketdiff.toyworld.world import DEMO_PROMPTS


def run_demo(teacher_dir: str | Path, out_dir: str | Path, guidance: float, steps: int = 25, n_eval: int = 200,
             seeds: int = 4, scheduler: str = "ddim") -> Path:
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    t0 = time.perf_counter()
    rows = []
    for s in range(seeds):
        cfg = GenerateConfig(prompt="", steps=steps, guidance=guidance, seed=1000 * s, scheduler=scheduler)
        rows.append(generate_many(list(DEMO_PROMPTS), cfg, pipeline_dir=teacher_dir / "pipeline"))
    grid = image_grid(np.stack(rows, 1).reshape(-1, *rows[0].shape[1:]), cols=seeds, scale=4)
    models = EvalModels.load(teacher_dir)
    items = prompt_set("toy-val", n_eval, 0)
    cfg = GenerateConfig(prompt="", steps=steps, guidance=guidance, seed=0, scheduler=scheduler)
    images = generate_many([it.prompt for it in items], cfg, pipeline_dir=teacher_dir / "pipeline")
    res = evaluate_images(models, items, images)
    quality = [{"metric": "FID", "value": res["fid"]}, {"metric": "CLIP score", "value": res["clip_score"]},
               {"metric": "attribute accuracy", "value": res["attribute_accuracy"]}]
    quality += [{"metric": f"accuracy {k}", "value": v["all"]} for k, v in res["attributes"].items() if k != "overall"]
    prompts = "".join(f"<li>{p}</li>" for p in DEMO_PROMPTS)
    page = write_page(out_dir / "index.html", "pocketdiff toy teacher", [
        ("Samples", f"<p>{scheduler}, {steps} steps, guidance {guidance}; one row per prompt, {seeds} seeds.</p>"
                    f"<ol>{prompts}</ol><img src='{png_data_uri(grid)}'>"),
        ("Quick eval", f"<p>toy-val, n={n_eval}, seed 0 ({time.perf_counter() - t0:.0f} s for this page). "
                       "Full numbers: docs/toy_teacher.md.</p>" + table_html(quality, ["metric", "value"])),
    ])
    return page
