"""Per-block latency table: every ResNet/attention block of the UNet, real input shapes, schema-valid
files keyed by target, and a device table loadable from file."""

import json

import jsonschema
import pytest

from pocketdiff.benchmarks.blocks import (SCHEMA, capture_block_inputs, load_latency_table, measure_block_latency,
                                          unet_blocks, write_latency_table)
from pocketdiff.errors import PocketdiffError


def test_blocks_named_like_diffusers(tiny_pipe):
    names = [n for n, _ in unet_blocks(tiny_pipe.unet)]
    cfg = tiny_pipe.unet.config
    n_down = sum(cfg.layers_per_block for _ in cfg.down_block_types)
    n_up = sum(cfg.layers_per_block + 1 for _ in cfg.up_block_types)
    assert sum(".resnets." in n for n in names) == n_down + 2 + n_up  # + two mid-block resnets
    assert "mid_block.attentions.0" in names and "down_blocks.0.resnets.0" in names


def test_capture_gives_real_shapes(tiny_pipe):
    import torch

    unet = tiny_pipe.unet
    args = (torch.zeros(2, 4, 8, 8), torch.tensor(10.0), torch.zeros(2, 77, 32))
    got = capture_block_inputs(unet, args)
    assert set(got) == {n for n, _ in unet_blocks(unet)}
    hidden = got["mid_block.attentions.0"][1]["encoder_hidden_states"]
    assert tuple(hidden.shape) == (2, 77, 32)  # the real cross-attention context reaches the block
    first = got["down_blocks.0.resnets.0"][0][0]
    assert first.shape[0] == 2 and first.shape[-1] == 8


def test_table_roundtrip_and_device_table(tiny_pipe, tmp_path):
    table = measure_block_latency(tiny_pipe.unet, batch=2, threads=1, warmup=1, repeat=3)
    assert all(b["median_ms"] > 0 and b["macs"] > 0 for b in table["blocks"].values())
    path = write_latency_table(tmp_path / "lut.json", "torch-cpu-1t", table, {"cpu": "test"})
    # a phone's table (measured elsewhere) merged under its own key, then selected
    phone = {**table, "backend": "executorch", "blocks": {k: {**v, "median_ms": 1.0} for k, v in table["blocks"].items()}}
    write_latency_table(path, "executorch-xnnpack-phone", phone, {"device": "phone"})
    doc = json.loads(path.read_text())
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    assert set(doc["tables"]) == {"torch-cpu-1t", "executorch-xnnpack-phone"}
    assert load_latency_table(path, "executorch-xnnpack-phone").latency_ms("mid_block.resnets.0") == 1.0
    here = load_latency_table(path, "torch-cpu-1t")
    assert here.latency_ms("mid_block.resnets.0") == table["blocks"]["mid_block.resnets.0"]["median_ms"]
    # the whole UNet and the per-call overhead drive the estimate of a slim UNet's latency
    assert here.unet_ms == table["unet"]["median_ms"] > 0 and table["unet"]["macs"] > table["blocks"][
        "mid_block.resnets.0"]["macs"]
    assert 0 < here.call_overhead_ms < here.unet_ms
    removed = ["mid_block.attentions.0", "up_blocks.1.resnets.2"]
    saved = [max(table["blocks"][b]["median_ms"] - table["call_overhead_ms"], 0.0) for b in removed]
    assert here.estimate_ms(removed) == pytest.approx(here.unet_ms - sum(saved)) and here.estimate_ms([]) == here.unet_ms
    with pytest.raises(PocketdiffError, match="has no whole-UNet latency"):
        load_latency_table(path, "executorch-xnnpack-phone").__class__("p", {}).estimate_ms([])
    with pytest.raises(PocketdiffError, match="no block 'mid_block.resnets.7'"):
        here.latency_ms("mid_block.resnets.7")
    with pytest.raises(PocketdiffError, match="unknown target in latency table"):
        load_latency_table(path, "coreml-ane")


def test_bad_tables(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format_version": 1, "tables": {"x": {"backend": "torch", "batch": 2,
                                                                     "sample_size": 8,
                                                                     "blocks": {"down.0": {"kind": "resnet",
                                                                                           "median_ms": 1}}}}}))
    with pytest.raises(PocketdiffError, match="does not match its schema"):
        load_latency_table(bad, "x")
    bad.write_text(json.dumps({"format_version": 9, "tables": {}}))
    with pytest.raises(PocketdiffError, match="format_version 9"):
        load_latency_table(bad, "x")
    with pytest.raises(PocketdiffError, match="unknown per-block latency backend 'tflite'; allowed: torch, onnx"):
        measure_block_latency(None, backend="tflite")


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_exported_block_latency(tiny_pipe, backend):
    """onnx / executorch: each block exported alone and timed in its runtime (two blocks here for time)."""
    only = ["down_blocks.0.resnets.0", "mid_block.attentions.0"]
    table = measure_block_latency(tiny_pipe.unet, batch=2, backend=backend, threads=1, warmup=1, repeat=2, only=only,
                                  whole=backend == "onnx")
    assert set(table["blocks"]) == set(only) and table["backend"] == backend
    assert ("unet" in table) == (backend == "onnx")
    if backend == "onnx":  # the whole exported UNet costs more than any one block, the pass-through less
        assert table["unet"]["median_ms"] > max(b["median_ms"] for b in table["blocks"].values())
        assert table["call_overhead_ms"] < table["unet"]["median_ms"]
    assert all(b["median_ms"] > 0 and b["macs"] > 0 for b in table["blocks"].values())


def test_bench_blocks_cli(tiny_pipeline_dir, tmp_path, capsys):
    from pocketdiff.cli import main

    out = tmp_path / "lut.json"
    assert main(["bench", "blocks", "--pipeline", str(tiny_pipeline_dir), "--threads", "1", "--repeat", "2",
                 "--warmup", "1", "--out", str(out), "--no-progress"]) == 0
    assert load_latency_table(out, "torch-cpu-1t").latency_ms("mid_block.resnets.0") > 0
    assert main(["bench", "blocks", "--arch", "tiny", "--backend", "tflite", "--out", str(out)]) == 2
    assert "unknown per-block latency backend 'tflite'" in capsys.readouterr().err
