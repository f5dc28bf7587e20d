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


def test_compare_ratios_and_end_to_end(tiny_pipeline_dir, onnx_bundle, tmp_path):
    out = tmp_path / "cmp.json"
    a = f"pipeline={tiny_pipeline_dir},steps=50,guidance=7.5"
    b = f"bundle={onnx_bundle},backend=onnx,steps=8,guidance=1"
    assert main(["bench", "compare", a, b, "--repeat", "3", "--warmup", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    rows = {(c["component"], c["batch"]): c for c in r["components"]}
    assert set(rows) == {("text_encoder", 1), ("unet", 1), ("unet", 2), ("vae_decoder", 1)}
    for c in rows.values():
        assert c["ratio_b_over_a"] == pytest.approx(c["B"]["median_ms"] / c["A"]["median_ms"], rel=1e-3)
    e = r["end_to_end"]
    ms = {k: v["A"]["median_ms"] for k, v in rows.items()}
    assert e["A"]["e2e_ms"] == pytest.approx(ms[("text_encoder", 1)] + 50 * ms[("unet", 2)] + ms[("vae_decoder", 1)])
    msb = {k: v["B"]["median_ms"] for k, v in rows.items()}
    assert e["B"]["e2e_ms"] == pytest.approx(msb[("text_encoder", 1)] + 8 * msb[("unet", 1)] + msb[("vae_decoder", 1)])
    assert e["speedup_a_over_b"] == pytest.approx(e["A"]["e2e_ms"] / e["B"]["e2e_ms"], rel=1e-3)


@pytest.mark.parametrize("side,message", [
    ("pipeline", "expected key=value items"),
    ("steps=8", "give exactly one of pipeline=DIR or bundle=DIR"),
    ("pipeline=x,backend=onnx", "unknown backend for a pipeline 'onnx'; allowed: torch"),
    ("bundle=x,speed=9", "unknown bench compare key 'speed'"),
    ("pipeline=x,steps=0", "steps must be an integer >= 1"),
])
def test_compare_bad_sides(tiny_pipeline_dir, capsys, side, message):
    assert main(["bench", "compare", side, f"pipeline={tiny_pipeline_dir}"]) == 2
    assert message in capsys.readouterr().err


def test_bench_arch_builds_once_and_counts_flops(tmp_path, monkeypatch, capsys):
    """--arch builds the random-weight pipeline (and its bundle) once under build/bench; FLOPs come
    from the pipeline's configs even when the measured source is the bundle."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r.json"
    args = ["bench", "--arch", "tiny", "--resolution", "64", "--backend", "onnx", "--repeat", "2", "--warmup", "1",
            "--no-progress", "--json", str(out)]
    assert main(args) == 0
    r = json.loads(out.read_text())
    unet2 = next(c for c in r["components"] if c["component"] == "unet" and c["batch"] == 2)
    assert unet2["flops"]["macs"] > 0 and r["source"].endswith("tiny-64-onnx")
    made = (tmp_path / "build" / "bench" / "tiny-64-onnx" / "manifest.json").stat().st_mtime
    assert main(args) == 0  # reuses the cached bundle
    assert (tmp_path / "build" / "bench" / "tiny-64-onnx" / "manifest.json").stat().st_mtime == made
    assert main(["bench", "--arch", "tiny", "--resolution", "60", "--no-progress"]) == 2
    assert "resolution must be a positive multiple of 16" in capsys.readouterr().err
