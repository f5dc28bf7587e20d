"""`pocketdiff bench`: every component measured in its own process, with FLOPs from the torch modules."""

import json

import pytest

from pocketdiff.cli import main


@pytest.fixture(scope="module")
def onnx_bundle(tiny_pipeline_dir, tmp_path_factory):
    from pocketdiff.export.bundle import ExportConfig, write_bundle

    return write_bundle(tiny_pipeline_dir, tmp_path_factory.mktemp("bench") / "b", ExportConfig(targets=("onnx",)))


def test_bench_torch_json(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--pipeline", str(tiny_pipeline_dir), "--repeat", "3", "--warmup", "1", "--json",
                 str(out), "--no-progress", "--peak-gflops", "100"]) == 0
    r = json.loads(out.read_text())
    assert [(c["component"], c["batch"]) for c in r["components"]] == [
        ("text_encoder", 1), ("unet", 1), ("unet", 2), ("vae_decoder", 1)]
    unet1, unet2 = r["components"][1], r["components"][2]
    assert unet2["flops"]["macs"] == 2 * unet1["flops"]["macs"] > 0  # counted, and linear in the batch
    for c in r["components"]:
        assert c["min_ms"] <= c["median_ms"] <= c["max_ms"] and c["repeat"] == 3
        assert c["cold_start_s"] >= c["first_call_s"] > 0 and c["peak_rss_mb"] > 100
        assert c["fraction_of_peak"] == pytest.approx(c["gflops_per_s"] / 100, abs=1e-3)
    assert r["machine"]["threads"] == 2 and "torch" in r["machine"]["versions"]
    assert "GFLOP/s" in capsys.readouterr().out


def test_bench_onnx_bundle(onnx_bundle, capsys):
    assert main(["bench", "--bundle", str(onnx_bundle), "--backend", "onnx", "--repeat", "2", "--warmup", "1",
                 "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith(("text_encoder", "unet", "vae_decoder")) for line in lines) == 4


@pytest.mark.parametrize("args,message", [
    (["--backend", "tflite"], "unknown backend 'tflite'"),
    (["--backend", "onnx"], "--backend onnx benchmarks an exported bundle: pass --bundle"),
    (["--repeat", "0"], "--repeat must be >= 1"),
    (["--json", "out.txt"], "--json must be a .json file"),
])
def test_bench_bad_args(tiny_pipeline_dir, capsys, args, message):
    assert main(["bench", "--pipeline", str(tiny_pipeline_dir), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err


def test_bench_bundle_without_backend(onnx_bundle, capsys):
    assert main(["bench", "--bundle", str(onnx_bundle), "--backend", "executorch", "--no-progress"]) == 2
    assert "has no unet for target 'executorch'" in capsys.readouterr().err
