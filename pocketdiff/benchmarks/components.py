"""Per-component benchmark: latency after warm-up, cold start, peak RSS, params, FLOPs, GFLOP/s.

Each (component, batch) is measured in its own child process (``python -m
pocketdiff.benchmarks.components``), so cold start (session creation + first run) and peak RSS
belong to that component alone. The child reports JSON on stdout.

Components: the text encoder (batch 1), one UNet step (batch 1 and 2; an ExecuTorch program only at
its static batch) and the VAE decoder (batch 1), on ``torch`` (a pipeline folder), ``onnx`` or
``executorch`` (a bundle). FLOPs come from the PyTorch module (``benchmarks/flops.py``) when a
pipeline folder is given. The fraction of peak divides by a measured sgemm rate
(:func:`measured_peak_gflops`) unless ``--peak-gflops`` is given.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from pocketdiff.architectures.decoder import PrunedDecoderAutoencoderKL, prune_decoder
from pocketdiff.architectures.factory import DECODERS, SPECS_DIR, build_pipeline, get_architecture, load_unet_spec, unet_class
from pocketdiff.benchmarks.flops import count_flops
from pocketdiff.benchmarks.latency import machine_info
from pocketdiff.benchmarks.session_worker import time_component
from pocketdiff.errors import PocketdiffError, choice_error
from pocketdiff.export.bundle import ExportConfig, write_bundle
from pocketdiff.export.components import component_specs
from pocketdiff.export.roles import Dims, bench_cases, get_role
from pocketdiff.pipedir import StageRecord, inspect_pipeline, load_pipeline, write_pipeline
from pocketdiff.runtime.bundle import load_bundle
from pocketdiff.runtime.signing import public_key_hex

BACKENDS = ("torch", "onnx", "executorch")


def measured_peak_gflops(threads: int, n: int = 2048, repeat: int = 10) -> dict:
    """The machine's practical fp32 peak: the best of ``repeat`` onnxruntime MatMuls of n x n x n on
    ``threads`` threads (MLAS sgemm, the fastest fp32 kernel here). On this VM it found 417 GFLOP/s on
    2 threads, where the /proc/cpuinfo estimate said 166: the estimate cannot see turbo clocks or
    two 512-bit FMA units per core (Zen 5)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm", spec[:2], spec[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {x: rng.random((n, n), dtype=np.float32) for x in "ab"}
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - t0)
    return {"peak_gflops": round(2 * n**3 / best / 1e9, 1),
            "how": f"measured: onnxruntime MatMul {n}x{n}x{n} fp32 on {threads} threads, best of {repeat}"}


def peak_gflops_estimate(threads: int) -> dict:
    """fp32 peak from /proc/cpuinfo: threads x clock x FLOPs/cycle (16 per FMA unit of 8 lanes: AVX2;
    32 with AVX-512; one unit assumed per core). An estimate; ``--peak-gflops`` overrides it."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
    flags = (re.search(r"^flags\s*:(.*)$", text, re.M) or [None, ""])[1].split()
    per_cycle = 32 if "avx512f" in flags else 16 if "fma" in flags else 8
    if not mhz:
        return {"peak_gflops": None, "how": "no clock in /proc/cpuinfo; pass --peak-gflops"}
    ghz = float(mhz.group(1)) / 1000
    return {"peak_gflops": round(threads * ghz * per_cycle, 1),
            "how": f"{threads} threads x {ghz:.2f} GHz x {per_cycle} fp32 FLOPs/cycle (estimate)"}


def _torch_worker(source: str, role: str, batch: int, threads: int, warmup: int, repeat: int) -> dict:
    """Runs in the child for the torch backend: load one component of a pipeline folder, time it. (Bundle
    backends run in ``benchmarks/session_worker.py``, which imports no torch, so its peak RSS is the
    runtime's own.)"""
    import torch

    def load():
        torch.set_num_threads(threads)
        pipe = load_pipeline(source)
        spec = component_specs(pipe, roles=[role])[0]
        feeds = get_role(role).fixed_inputs(Dims.from_pipe(pipe), batch)
        args = [torch.from_numpy(feeds[n]) for n in spec.input_names]

        def call():
            with torch.no_grad():
                return spec.module(*args)
        return call

    return time_component(load, warmup, repeat)


def vae_class(config: dict):
    """The VAE class a pipeline's ``vae/config.json`` names: the TAESD-style ``AutoencoderTiny``, the pruned-decoder
    ``PrunedDecoderAutoencoderKL``, else ``AutoencoderKL``."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    return {"AutoencoderTiny": AutoencoderTiny, "PrunedDecoderAutoencoderKL": PrunedDecoderAutoencoderKL}.get(
        config.get("_class_name"), AutoencoderKL)


def meta_pipeline(pipeline_dir: str | Path):
    """The pipeline's three models built from its configs on the meta device (no weights, no memory),
    for FLOP counting."""
    from types import SimpleNamespace

    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    info = inspect_pipeline(pipeline_dir)
    with torch.device("meta"):
        return SimpleNamespace(unet=unet_class(info.unet_config).from_config(info.unet_config).eval(),
                               vae=vae_class(info.vae_config).from_config(info.vae_config).eval(),
                               text_encoder=CLIPTextModel(CLIPTextConfig(**info.text_encoder_config)).eval())


def component_flops(pipe, role: str, batch: int) -> dict:
    import torch

    spec = component_specs(pipe, roles=[role])[0]
    with torch.device("meta"):
        example = tuple(torch.zeros((batch, *x.shape[1:]) if n in spec.batch_inputs else x.shape, dtype=x.dtype)
                        for x, n in zip(spec.example, spec.input_names))
        return {**count_flops(spec.module, example).to_dict(), "by_op": None}


def arch_sources(arch: str, backend: str, resolution: int | None, cache_dir: str | Path = "build/bench",
                 unet_spec: str | Path | None = None, decoder_width: float | None = None,
                 decoder: str | None = None, quantize: str | None = None, calibration: int = 0
                 ) -> tuple[Path, Path]:
    """(benchmark source, pipeline folder) for a named architecture with random weights.

    The pipeline (and, for onnx/executorch, its bundle) is built once under ``cache_dir`` and
    reused; weights do not change latency, FLOPs or memory. ``unet_spec`` is a JSON file of UNet
    config overrides (``architectures.factory.load_unet_spec``); its content names the cache folder.
    ``decoder_width`` swaps in the channel-pruned VAE decoder at that width
    (``architectures.decoder.prune_decoder``; it prunes the KL decoder, so it implies ``decoder="kl"``);
    ``decoder`` (``architectures.factory.DECODERS``) replaces the architecture's decoder kind. ``quantize``
    exports the bundle quantised (``export.bundle.ExportConfig.quantize``), its activations calibrated on
    ``calibration`` prompts when > 0 (``ExportConfig.calibration``).
    """
    a = get_architecture(arch)
    overrides = load_unet_spec(unet_spec) if unet_spec else None
    pruned = decoder_width is not None and decoder_width != 1.0
    if pruned and decoder not in (None, "kl"):
        raise PocketdiffError(f"decoder_width prunes the KL decoder; it cannot go with decoder={decoder!r}")
    decoder = "kl" if pruned else (decoder or a.decoder)
    if decoder not in DECODERS:
        raise choice_error("decoder", decoder, DECODERS)
    resolution = resolution or a.image_size
    cache = Path(cache_dir)
    name = f"{arch}-{resolution}"
    if overrides or a.unet_spec:  # the spec's content names the folder: an edited spec is a new build
        spec = {**(load_unet_spec(SPECS_DIR / a.unet_spec) if a.unet_spec else {}), **(overrides or {})}
        name += "-unet" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    if pruned:
        name += f"-dec{decoder_width:g}"
    elif decoder != a.decoder:
        name += f"-{decoder}"
    pipe_dir = cache / name
    if not pipe_dir.is_dir():
        pipe = build_pipeline(arch, seed=0, resolution=resolution, unet_overrides=overrides, decoder=decoder)
        if pruned:
            from diffusers import StableDiffusionPipeline

            pipe = StableDiffusionPipeline(**{**pipe.components, "vae": prune_decoder(pipe.vae, decoder_width)},
                                           requires_safety_checker=False)
        write_pipeline(pipe, pipe_dir, [StageRecord("create", {"arch": arch, "seed": 0, "resolution": resolution,
                                                               "unet_overrides": overrides,
                                                               "decoder_width": decoder_width,
                                                               "decoder": decoder})])
    if backend == "torch":
        return pipe_dir, pipe_dir
    bundle = cache / f"{name}-{backend}"
    if quantize is not None:
        bundle = bundle.with_name(f"{bundle.name}-{quantize}" + (f"-cal{calibration}" if calibration else ""))
    if not bundle.is_dir():
        write_bundle(pipe_dir, bundle, ExportConfig(targets=(backend,), quantize=quantize, steps=a.steps,
                                                    calibration=calibration))
    return bundle, pipe_dir


def bench_components(source: str | Path, backend: str, threads: int = 2, warmup: int = 3, repeat: int = 10,
                     peak_gflops: float | None = None, progress=None, pipeline_dir: str | Path | None = None,
                     trusted_key=None) -> dict:
    """Benchmark every component of ``source`` (pipeline folder for torch, bundle for onnx/executorch; its
    manifest's signature checked with ``trusted_key`` when given, here and in every child).

    FLOPs need the torch models' configs: the pipeline folder itself for torch, ``pipeline_dir``
    (if given) for a bundle."""
    if backend not in BACKENDS:
        raise choice_error("backend", backend, BACKENDS)
    source = Path(source)
    if backend == "torch":
        inspect_pipeline(source)
        pipeline_dir = source
        cases = bench_cases()
    else:
        bundle = load_bundle(source, trusted_key=trusted_key)
        bundle.component("unet", backend)  # error early if the bundle lacks this backend
        have = {c.role: c.inputs[0]["shape"][0] for c in bundle.components if c.target == backend}
        cases = [(r, b) for r, b in bench_cases(have) if not isinstance(have[r], int) or have[r] == b]
    peak = {"peak_gflops": peak_gflops, "how": "--peak-gflops"} if peak_gflops else measured_peak_gflops(threads)
    peak["cpuinfo_estimate"] = peak_gflops_estimate(threads)
    meta = meta_pipeline(pipeline_dir) if pipeline_dir else None
    rows = []
    for i, (role, batch) in enumerate(cases):
        worker = "pocketdiff.benchmarks.components" if backend == "torch" else "pocketdiff.benchmarks.session_worker"
        cmd = [sys.executable, "-m", worker, str(source), backend, role, str(batch), str(threads), str(warmup),
               str(repeat), public_key_hex(trusted_key) if trusted_key is not None else ""]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PocketdiffError(f"benchmark of {role} (batch {batch}) on {backend} failed: "
                                  f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
        row = {"component": role, "batch": batch, **json.loads(proc.stdout.strip().splitlines()[-1])}
        flops = component_flops(meta, role, batch) if meta else None
        row["flops"] = flops
        if flops and row["median_ms"] > 0:
            row["gflops_per_s"] = round(flops["flops"] / row["median_ms"] / 1e6, 2)
            if peak["peak_gflops"]:
                row["fraction_of_peak"] = round(row["gflops_per_s"] / peak["peak_gflops"], 4)
        rows.append(row)
        if progress:
            progress(i + 1, len(cases))
    return {"source": str(source), "backend": backend, "threads": threads, "warmup": warmup, "repeat": repeat,
            "peak": peak, "machine": machine_info(threads), "components": rows}


if __name__ == "__main__":  # the child process of bench_components (torch backend)
    src, _, role_, batch_, threads_, warmup_, repeat_ = sys.argv[1:8]
    # the child's protocol: one JSON line on stdout, read by bench_components
    sys.stdout.write(json.dumps(_torch_worker(src, role_, int(batch_), int(threads_), int(warmup_), int(repeat_)))
                     + "\n")
