"""Shared fixtures: tiny models built from config (never downloaded), exported once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    from pocketdiff.architectures.factory import build_pipeline
    from pocketdiff.pipedir import StageRecord, write_pipeline

    out = tmp_path_factory.mktemp("tiny") / "pipeline"
    write_pipeline(build_pipeline("tiny", seed=0), out, [StageRecord("create", {"arch": "tiny", "seed": 0})])
    return out


@pytest.fixture(scope="session")
def tiny_pipe(tiny_pipeline_dir):
    from pocketdiff.pipedir import load_pipeline

    return load_pipeline(tiny_pipeline_dir)


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_pipeline_dir, tmp_path_factory):
    from pocketdiff.export.onnx import export_onnx

    return export_onnx(tiny_pipeline_dir, tmp_path_factory.mktemp("tiny_onnx") / "onnx")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_pipeline_dir, tmp_path_factory):
    """The one all-target export of the suite (about 2 minutes on 2 cores); read-only for tests."""
    from pocketdiff.export.bundle import ExportConfig, write_bundle

    return write_bundle(tiny_pipeline_dir, tmp_path_factory.mktemp("bundle") / "b",
                        ExportConfig(targets=("onnx", "coreml", "executorch"), steps=6, guidance=7.5))


@pytest.fixture
def copy_pipeline(tiny_pipeline_dir, tmp_path):
    """A private, editable copy of the tiny pipeline folder (for corrupting it)."""
    import shutil

    def _copy(name: str = "pipeline"):
        dst = tmp_path / name
        shutil.copytree(tiny_pipeline_dir, dst)
        return dst

    return _copy


@pytest.fixture(scope="session")
def ports(tmp_path_factory):
    """The app ports' runners (tests/ports.py): the Kotlin core compiled once, node with web_demo's packages."""
    from ports import build_ports

    return build_ports(tmp_path_factory.mktemp("kotlin"))
