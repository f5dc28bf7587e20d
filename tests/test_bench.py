"""`pocketdiff bench`: every component measured in its own process, with FLOPs from the torch modules."""

import json

import pytest

from pocketdiff.cli import main
from pocketdiff.errors import PocketdiffError


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


def test_compare_ratios_and_end_to_end(tiny_pipeline_dir, onnx_bundle, tmp_path, monkeypatch):
    """Three sides in one run: diffusers eager, optimum's own export + ORTStableDiffusionPipeline, and
    our bundle; ratios are each side over A, and the composed end-to-end follows each side's steps/CFG."""
    monkeypatch.chdir(tmp_path)  # optimum's export is cached under ./build/bench/optimum
    out, page = tmp_path / "cmp.json", tmp_path / "cmp.html"
    a = f"pipeline={tiny_pipeline_dir},steps=50,guidance=7.5"
    b = f"bundle={onnx_bundle},backend=onnx,steps=8,guidance=1"
    c = f"pipeline={tiny_pipeline_dir},backend=optimum,steps=50,guidance=7.5"
    assert main(["bench", "compare", a, b, c, "--repeat", "3", "--warmup", "1", "--json", str(out),
                 "--html", str(page), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert [r["sides"][n]["backend"] for n in "ABC"] == ["torch", "onnx", "optimum"]
    rows = {(c["component"], c["batch"]): c for c in r["components"]}
    assert set(rows) == {("text_encoder", 1), ("unet", 1), ("unet", 2), ("vae_decoder", 1)}
    for row in rows.values():
        for n in "BC":
            # the stored ratio is rounded to 4 decimals
            assert row["ratio_vs_a"][n] == pytest.approx(row[n]["median_ms"] / row["A"]["median_ms"], abs=5.1e-5)
    e = r["end_to_end"]
    ms = {k: v["A"]["median_ms"] for k, v in rows.items()}
    # composed from each side's trace: CFG encodes the negative prompt and the prompt (two batch-1 calls), then
    # one batch-2 UNet call per step (the tiny pipeline's PNDM runs 50 steps as 51 calls: PLMS's extra one);
    # guidance 1 encodes the prompt alone and runs batch 1
    assert e["A"]["calls"] == e["C"]["calls"] == {"text_encoder@1": 2, "unet@2": 51, "vae_decoder@1": 1}
    assert e["B"]["calls"] == {"text_encoder@1": 1, "unet@1": 9, "vae_decoder@1": 1}
    assert e["A"]["e2e_ms"] == pytest.approx(2 * ms[("text_encoder", 1)] + 51 * ms[("unet", 2)]
                                             + ms[("vae_decoder", 1)])
    msb = {k: v["B"]["median_ms"] for k, v in rows.items()}
    assert e["B"]["e2e_ms"] == pytest.approx(msb[("text_encoder", 1)] + 9 * msb[("unet", 1)] + msb[("vae_decoder", 1)])
    assert len(r["traces"]["A"][0]) == 2 + 51 + 1
    assert e["speedup_vs_a"]["B"] == pytest.approx(e["A"]["e2e_ms"] / e["B"]["e2e_ms"], rel=1e-3)
    # optimum ran its own export, made once and cached, not our bundle
    assert [p.parent.name for p in (tmp_path / "build/bench/optimum").glob("*/unet/model.onnx")] == ["unet"]
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 2 and "Ratios to side A" in text and "optimum ORT" in text


@pytest.mark.slow  # (make test-slow) two benches for one page
def test_bench_report_from_saved_json(tiny_pipeline_dir, onnx_bundle, tmp_path, capsys):
    t, o, page = tmp_path / "t.json", tmp_path / "o.json", tmp_path / "r.html"
    assert main(["bench", "--pipeline", str(tiny_pipeline_dir), "--repeat", "2", "--warmup", "1", "--json", str(t),
                 "--no-progress"]) == 0
    assert main(["bench", "--bundle", str(onnx_bundle), "--backend", "onnx", "--repeat", "2", "--warmup", "1",
                 "--json", str(o), "--no-progress"]) == 0
    assert main(["bench", "report", str(t), str(o), "--out", str(page)]) == 0
    text = page.read_text()
    assert "GMACs" in text and "Machine" in text and text.count("data:image/png;base64,") == 1
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["bench", "report", str(tmp_path / "bad.json"), "--out", str(page)]) == 2
    assert "is neither a `bench --json` nor a `bench compare --json` result" in capsys.readouterr().err


@pytest.mark.parametrize("side,message", [
    ("pipeline", "expected key=value items"),
    ("steps=8", "give exactly one of pipeline=DIR, bundle=DIR or arch=NAME"),
    ("pipeline=x,backend=onnx", "unknown backend for a pipeline 'onnx'; allowed: torch, optimum"),
    ("bundle=x,backend=torch", "unknown backend for a bundle 'torch'; allowed: onnx, executorch"),
    ("bundle=x,speed=9", "unknown bench compare key 'speed'"),
    ("pipeline=x,steps=0", "steps must be an integer >= 1"),
])
def test_compare_bad_sides(tiny_pipeline_dir, capsys, side, message):
    assert main(["bench", "compare", side, f"pipeline={tiny_pipeline_dir}"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # (make test-slow) an arch bundle built for it; make test keeps arch FLOPs (test_slim_unet.py)
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
    assert r["peak"]["how"].startswith("measured: onnxruntime MatMul") and r["peak"]["peak_gflops"] > 1
    made = (tmp_path / "build" / "bench" / "tiny-64-onnx" / "manifest.json").stat().st_mtime
    assert main(args) == 0  # reuses the cached bundle
    assert (tmp_path / "build" / "bench" / "tiny-64-onnx" / "manifest.json").stat().st_mtime == made
    assert main(["bench", "--arch", "tiny", "--resolution", "60", "--no-progress"]) == 2
    assert "resolution must be a positive multiple of 16" in capsys.readouterr().err


@pytest.mark.slow  # (make test-slow) two arch benches; make test keeps --unet-spec's MACs on the meta device (test_slim_unet.py)
def test_bench_unet_spec(tmp_path, monkeypatch, capsys):
    """--unet-spec overrides the architecture's UNet config; the counted MACs follow it exactly."""
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "slim.json"
    spec.write_text(json.dumps({"_class_name": "UNet2DConditionModel", "layers_per_block": 1}))
    runs = {}
    for name, extra in (("base", []), ("slim", ["--unet-spec", str(spec)])):
        out = tmp_path / f"{name}.json"
        assert main(["bench", "--arch", "tiny", "--repeat", "1", "--warmup", "0", "--no-progress", "--json", str(out),
                     *extra]) == 0
        runs[name] = {(c["component"], c["batch"]): c for c in json.loads(out.read_text())["components"]}
    base, slim = runs["base"][("unet", 1)]["flops"], runs["slim"][("unet", 1)]["flops"]
    assert slim["params"] < base["params"] and slim["macs"] < base["macs"]
    assert runs["slim"][("vae_decoder", 1)]["flops"] == runs["base"][("vae_decoder", 1)]["flops"]
    from pocketdiff.architectures.factory import build_pipeline

    assert slim["params"] == sum(p.numel() for p in build_pipeline("tiny", unet_overrides={"layers_per_block": 1})
                                 .unet.parameters())
    spec.write_text(json.dumps({"layers_per_blok": 1}))
    assert main(["bench", "--arch", "tiny", "--unet-spec", str(spec), "--no-progress"]) == 2
    assert "unknown UNet2DConditionModel config key(s) layers_per_blok" in capsys.readouterr().err
    assert main(["bench", "--pipeline", "x", "--unet-spec", str(spec), "--no-progress"]) == 2
    assert "--unet-spec applies to --arch" in capsys.readouterr().err


def test_peak_rss_is_the_childs_own(tmp_path):
    """A child started from a parent holding 2 GB must not report the parent's peak."""
    import subprocess
    import sys

    import numpy as np

    from pocketdiff.benchmarks.session_worker import peak_rss_mb

    ballast = np.ones(2048 * 2**20 // 8)  # noqa: F841  (held while the child runs; a forked child starts at it)
    assert peak_rss_mb() > 2048
    child = subprocess.run([sys.executable, "-c", "from pocketdiff.benchmarks.session_worker import peak_rss_mb;"
                            "import sys; sys.stdout.write(str(peak_rss_mb()))"], capture_output=True, text=True)
    assert float(child.stdout) < 1500  # its own: the imports alone are ~500 MB


def test_compare_pairwise(tiny_pipeline_dir, onnx_bundle, tmp_path):
    """--pairwise: A alternates with each side in turn; A's samples pool over the pairs."""
    out = tmp_path / "p.json"
    sides = [f"pipeline={tiny_pipeline_dir},steps=10", f"bundle={onnx_bundle},backend=onnx,steps=10",
             f"bundle={onnx_bundle},backend=onnx,steps=4,guidance=1"]
    assert main(["bench", "compare", *sides, "--pairwise", "--repeat", "3", "--warmup", "1", "--json", str(out),
                 "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["alternation"] == "pairwise with A"
    for row in r["components"]:
        assert row["A"]["repeat"] == 6 and row["B"]["repeat"] == 3 and set(row["ratio_vs_a"]) == {"B", "C"}


def test_compare_some_components(tiny_pipeline_dir, onnx_bundle, tmp_path, capsys):
    """--components unet: only the UNet rows, and no end-to-end figure (it needs every component)."""
    out = tmp_path / "u.json"
    sides = [f"pipeline={tiny_pipeline_dir},steps=10", f"bundle={onnx_bundle},backend=onnx,steps=10"]
    assert main(["bench", "compare", *sides, "--components", "unet", "--repeat", "2", "--warmup", "1", "--json",
                 str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert {row["component"] for row in r["components"]} == {"unet"} and "e2e_ms" not in r["end_to_end"]["A"]
    assert main(["bench", "report", str(out), "--out", str(tmp_path / "u.html")]) == 0  # no end-to-end section
    assert "Composed end to end" not in (tmp_path / "u.html").read_text()
    assert main(["bench", "compare", *sides, "--components", "vae", "--no-progress"]) == 2
    assert "unknown component 'vae'; allowed: text_encoder, unet, vae_decoder" in capsys.readouterr().err


@pytest.mark.slow  # (make test-slow) two tiny bundles built for it; make test keeps the spec's parsing and MACs (test_slim_unet.py)
def test_compare_arch_sides_with_a_spec(tmp_path, monkeypatch):
    """arch=tiny vs arch=tiny,spec=FILE: built once under the cache, compared as bundles."""
    from pocketdiff.benchmarks.compare import parse_side

    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "slim.json"
    spec.write_text(json.dumps({"removed_blocks": ["mid_block.attentions.0", "up_blocks.1.resnets.2"]}))
    full, slim = parse_side("arch=tiny,steps=4"), parse_side(f"arch=tiny,spec={spec},steps=4")
    assert full.kind == slim.kind == "bundle" and full.backend == "onnx" and full.path != slim.path
    assert parse_side(f"arch=tiny,spec={spec},backend=torch").kind == "pipeline"
    assert main(["bench", "compare", "arch=tiny", f"arch=tiny,spec={spec}", "--components", "unet", "--repeat", "2",
                 "--warmup", "1", "--json", "c.json", "--no-progress"]) == 0
    assert {r["component"] for r in json.loads((tmp_path / "c.json").read_text())["components"]} == {"unet"}
    pruned = parse_side("arch=tiny,decoder_width=0.5,backend=torch")
    from pocketdiff.pipedir import load_pipeline

    assert load_pipeline(pruned.path).vae.config.decoder_block_out_channels == [8, 16, 16]
    with pytest.raises(PocketdiffError, match="spec=, resolution=, decoder=, decoder_width= go with arch=NAME only"):
        parse_side(f"pipeline={tmp_path},spec={spec}")
    with pytest.raises(PocketdiffError, match="unknown backend for an arch side 'coreml'"):
        parse_side("arch=tiny,backend=coreml")
