"""SD1.5 architecture with random weights: export bundles to ONNX (fp32, fp16) and ExecuTorch, each in
its own process, within 20 GB peak RSS, with the exporter's parity checks passing.

Slow (tens of minutes, GBs of RAM): run with `make test-slow`. Each export runs as a separate
``pocketdiff export`` process so its peak RSS is measured on its own (``os.wait4``).
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
PEAK_RSS_LIMIT_GB = 20.0
CLI = [sys.executable, "-m", "pocketdiff.cli"]


def _run_measured(args: list[str]) -> float:
    """Run the CLI in a child process; return its peak RSS in GB (Linux ru_maxrss is in KiB)."""
    proc = subprocess.Popen(CLI + args)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, f"pocketdiff {' '.join(args)} exited {proc.returncode}"
    return usage.ru_maxrss / 1024**2


@pytest.fixture(scope="module")
def sd15_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd15") / "pipeline"
    subprocess.run(CLI + ["create", "--arch", "sd15", "--out", str(out)], check=True)
    return out


def _check_bundle(bundle, target: str, precision: str, min_psnr: float) -> list[dict]:
    components = [c for c in json.loads((bundle / "manifest.json").read_text())["components"]]
    assert {c["role"] for c in components} == {"text_encoder", "unet", "vae_decoder"}
    for c in components:
        assert c["target"] == target and c["precision"] == precision
        for batch, results in c["parity"].items():
            for name, r in results.items():
                assert r["ok"] and r["psnr_db"] >= min_psnr, (c["role"], batch, name, r)
                print(f"SD1.5 {target} {precision} {c['role']}.{name} {batch}: PSNR {r['psnr_db']:.1f} dB, "
                      f"max abs {r['max_abs']:.2e}")
    return components


@pytest.mark.parametrize("target,precision,min_psnr", [
    ("onnx", "fp32", 60.0),
    ("onnx", "fp16", 35.0),
    ("executorch", "fp32", 60.0),
])
def test_sd15_export(sd15_dir, tmp_path, target, precision, min_psnr):
    bundle = tmp_path / "bundle"
    peak = _run_measured(["export", "--pipeline", str(sd15_dir), "--out", str(bundle), "--targets", target,
                          "--precision", precision, "--no-progress"])
    print(f"SD1.5 export {target} {precision}: peak RSS {peak:.1f} GB")
    assert peak <= PEAK_RSS_LIMIT_GB
    components = _check_bundle(bundle, target, precision, min_psnr)
    if target == "executorch":
        unet = next(c for c in components if c["role"] == "unet")
        print(f"SD1.5 ExecuTorch UNet: {unet['meta']['delegated_fraction']:.1%} of compute nodes in XNNPACK")


def test_sd15_bench_onnx_reports_unet_macs(tmp_path):
    """`pocketdiff bench --arch sd15 --backend onnx --resolution 512` completes; its UNet conv+linear MACs
    match BK-SDM's published ~339G (thop counts only Conv2d/Linear modules; docs/benchmarks.md)."""
    out = tmp_path / "sd15.json"
    subprocess.run(CLI + ["bench", "--arch", "sd15", "--backend", "onnx", "--resolution", "512", "--repeat", "2",
                          "--warmup", "1", "--no-progress", "--json", str(out)], check=True, cwd=tmp_path)
    r = json.loads(out.read_text())
    unet = next(c for c in r["components"] if c["component"] == "unet" and c["batch"] == 1)
    macs = unet["flops"]["conv_linear_macs"]
    print(f"SD1.5 UNet 512², batch 1: {macs / 1e9:.1f}G conv+linear MACs, {unet['flops']['macs'] / 1e9:.1f}G in all; "
          f"onnxruntime median {unet['median_ms']:.0f} ms")
    assert abs(macs / 339e9 - 1) < 0.05
