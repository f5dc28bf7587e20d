"""onnxruntime latency of random-weight TAESD-style decoders for a teacher VAE, by channels x blocks per stage:
the sizing probe behind docs/efficient_decoder.md's choice of 16 channels x 4 blocks (before any training).

    python scripts/tiny_decoder_latency.py [--shape 16x2 --shape 16x4 ...] [--threads 2 --repeat 50]

Every decoder is exported with ``torch.onnx`` and timed in one process, the decoders alternating, after
warm-up calls; the median per decoder is printed. Compare decoders with each other here; the ratio to the
teacher decoder is what ``scripts/efficient_decoder_report.py`` measures, through the bundle export.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pocketdiff.architectures.decoder import tiny_decoder_vae
from pocketdiff.pipedir import load_pipeline
from pocketdiff.toyworld import TOY_TEACHER_DIR


class _Decode(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z):  # [1, C, h, w] -> [1, 3, H, W]
        return self.vae.decode(z).sample


def main(argv=None) -> int:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(TOY_TEACHER_DIR / "pipeline"))
    p.add_argument("--shape", action="append", help="CHANNELSxBLOCKS (repeatable; default 16x2 16x3 16x4 16x6 "
                                                   "20x2 24x2 32x2)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in (args.shape or
                                                            "16x2 16x3 16x4 16x6 20x2 24x2 32x2".split())]
    pipe = load_pipeline(args.teacher)
    z = torch.randn(1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    sessions, params = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for c, b in shapes:
            torch.manual_seed(0)
            vae = tiny_decoder_vae(pipe.vae, c, b).eval()
            f = Path(tmp) / f"{c}x{b}.onnx"
            torch.onnx.export(_Decode(vae), (z,), str(f), input_names=["z"], output_names=["image"], dynamo=False)
            sessions[f"{c}x{b}"] = ort.InferenceSession(str(f), opts, providers=["CPUExecutionProvider"])
            params[f"{c}x{b}"] = sum(q.numel() for q in vae.decoder.parameters())
    feed = {"z": z.numpy()}
    for s in sessions.values():
        for _ in range(args.warmup):
            s.run(None, feed)
    times = {n: [] for n in sessions}
    for _ in range(args.repeat):
        for n, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[n].append(time.perf_counter() - t0)
    print(f"latent {tuple(z.shape)}, onnxruntime {args.threads} threads, median of {args.repeat}")
    for n in sessions:
        print(f"{n:>6}: {1000 * float(np.median(times[n])):.3f} ms, decoder params {params[n] / 1e6:.3f} M")
    return 0


if __name__ == "__main__":
    sys.exit(main())
