"""Per-attribute accuracy and FID of the teacher's decoder vs a distilled one on the same sampler latents, and
how the checker and FID move under random pixel noise of the same size (the analysis in
docs/efficient_decoder.md).

    python scripts/decoder_attribute_probe.py --student build/decoder/tiny16 [--n 400]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pocketdiff.benchmarks.quality import EvalModels, attribute_report, fid, prompt_set, reference_images
from pocketdiff.generate import GenerateConfig, generate_many, images_from_latents
from pocketdiff.pipedir import load_pipeline
from pocketdiff.toyworld import TEACHER_GUIDANCE, TOY_TEACHER_DIR


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(TOY_TEACHER_DIR / "pipeline"))
    p.add_argument("--student", required=True, help="a distill-decoder output pipeline")
    p.add_argument("--n", type=int, default=400)
    args = p.parse_args(argv)
    models = EvalModels.load(TOY_TEACHER_DIR)
    items = prompt_set("toy-val", args.n, 0)
    cfg = GenerateConfig(prompt="", steps=50, guidance=TEACHER_GUIDANCE, seed=0, scheduler="ddim")
    latents = generate_many([it.prompt for it in items], cfg, pipeline_dir=args.teacher, output="latent")
    images, ref = {}, reference_images(items, 0)
    for name, d in (("teacher", args.teacher), ("student", args.student)):
        images[name] = images_from_latents(load_pipeline(d).vae.eval(), latents)
        r = attribute_report(models, items, images[name])
        print(name, f"FID {fid(models, images[name], ref):.3f}", {k: round(v, 3) for k, v in r["overall"].items()},
              {k: round(v["all"], 3) for k, v in r.items() if k != "overall"})
    t = images["teacher"].astype(int)
    print("mean abs pixel difference student vs teacher:", round(float(np.abs(images["student"] - t).mean()), 3))
    rng = np.random.default_rng(0)
    for amp in (1, 2, 3):
        noisy = np.clip(t + rng.integers(-amp, amp + 1, t.shape), 0, 255).astype(np.uint8)
        r = attribute_report(models, items, noisy)["overall"]
        print(f"teacher + uniform noise ±{amp}: FID {fid(models, noisy, ref):.3f}, accuracy {r['all']:.3f}, "
              f"shape {r['shape']:.3f}, colour {r['colour']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
