"""Fuzzed loaders (hypothesis): mutated and random manifests, tokenizer files and prompts, scheduler configs.
Every case either loads (runs) or raises a one-line PocketdiffError: no other exception type, no hang (each
example has a deadline), and, for manifests, no path outside the bundle opened or stat'ed.

`make test` runs a few hundred cases per loader; `make test-slow` runs thousands and prints the counts:
`.venv/bin/python -m pytest -m slow tests/test_fuzz.py -s`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.bundle import sha256_file
from pocketdiff.runtime.sampler import RuntimePipeline
from pocketdiff.runtime.schedulers import SCHEDULERS, scheduler_from_config
from pocketdiff.runtime.tokenizer import CLIPBPETokenizer
from pocketdiff.toyworld import TOY_TEACHER_DIR
from touched import Touched

STUDENT = Path(TOY_TEACHER_DIR) / "student"
QUICK, SLOW = 200, 2500
HOSTILE_PATHS = ("/etc/passwd", "../outside", "onnx/../../outside", "C:\\x", "onnx\\unet", "", ".", "a//b",
                 "tokenizer/../../x", "onnx/unet/model.onnx/..", "\0", "~/x")
JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 10**12) | st.floats() | st.text(max_size=12),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=6)


class FakeSession:
    """Stands in for a model session: records the file it was given, which must be inside the bundle."""

    def __init__(self, path, inputs, outputs, threads):
        self.path, self.inputs, self.outputs, self.fixed_batch = Path(path), inputs, outputs, None


@pytest.fixture(scope="module")
def fake_bundle(tmp_path_factory):
    """The shipped student's manifest over small stand-in files (the loaders never open a model here): onnx
    components only, real tokenizer files, checksums recomputed."""
    root = tmp_path_factory.mktemp("fuzz") / "bundle"
    m = json.loads((STUDENT / "manifest.json").read_text())
    m["components"] = [c for c in m["components"] if c["target"] == "onnx"]
    shutil.copytree(STUDENT / "tokenizer", root / "tokenizer")
    for c in m["components"]:
        (root / c["path"]).parent.mkdir(parents=True, exist_ok=True)
        (root / c["path"]).write_bytes(b"not a model: " + c["role"].encode())
    (root / "test_vectors.json").write_text("{}")
    m["files"] = [{"path": f.relative_to(root).as_posix(), "sha256": sha256_file(f), "bytes": f.stat().st_size}
                  for f in sorted(root.rglob("*")) if f.is_file()]
    (root / "manifest.json").write_text(json.dumps(m))
    return root, m


def _places(obj, path=()):
    """Every (path to a value) in a JSON document, containers included."""
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _places(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _places(v, path + (i,))


def _mutate(doc, data) -> object:
    doc = json.loads(json.dumps(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        places = list(_places(doc))
        where = data.draw(st.sampled_from(places[1:])) if len(places) > 1 else ()
        parent = doc
        for k in where[:-1]:
            parent = parent[k]
        action = data.draw(st.sampled_from(["delete", "replace", "hostile path", "unknown key"]))
        key = where[-1] if where else None
        if action == "delete" and isinstance(parent, dict):
            del parent[key]
        elif action == "delete" and isinstance(parent, list):
            parent.pop(key)
        elif action == "replace" and key is not None:
            parent[key] = data.draw(JSON)
        elif action == "hostile path" and key is not None:
            parent[key] = data.draw(st.sampled_from(HOSTILE_PATHS))
        elif action == "unknown key" and isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=6))] = data.draw(JSON)
    return doc


def _expect_one_line_error_or_success(fn) -> str:
    try:
        fn()
        return "loaded"
    except PocketdiffError as exc:
        assert "\n" not in str(exc), str(exc)
        return "refused"


def _load(root: Path, monkeypatch, opened: list) -> None:
    monkeypatch.setattr("pocketdiff.runtime.sampler.BACKENDS", {"onnx": FakeSession})
    opened += [s.path for s in RuntimePipeline.from_bundle(root, "onnx").sessions.values()]


def _fuzz_manifests(fake_bundle, n: int, counts: dict) -> None:
    root, valid = fake_bundle

    @settings(max_examples=n, deadline=2000, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        kind = data.draw(st.sampled_from(["mutated", "mutated", "mutated", "random JSON", "random bytes"]))
        if kind == "mutated":
            (root / "manifest.json").write_text(json.dumps(_mutate(valid, data)))
        elif kind == "random JSON":
            (root / "manifest.json").write_text(json.dumps(data.draw(JSON)))
        else:
            (root / "manifest.json").write_bytes(data.draw(st.binary(max_size=200)))
        opened: list[Path] = []
        with pytest.MonkeyPatch.context() as mp:
            touched = Touched(mp)
            outcome = _expect_one_line_error_or_success(lambda: _load(root, mp, opened))
            outside = touched.outside(root)
        assert outside == [], outside
        assert all(str(p.resolve()).startswith(str(root.resolve())) for p in opened)  # what a session would open
        counts[f"manifest {outcome}"] = counts.get(f"manifest {outcome}", 0) + 1

    try:
        case()
    finally:
        (root / "manifest.json").write_text(json.dumps(valid))


def _fuzz_tokenizer(tmp_path: Path, n: int, counts: dict) -> None:
    vocab = json.loads((STUDENT / "tokenizer" / "vocab.json").read_text())
    merges = (STUDENT / "tokenizer" / "merges.txt").read_text()
    tok = CLIPBPETokenizer.from_dir(STUDENT / "tokenizer")

    @settings(max_examples=n, deadline=2000, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        prompt = data.draw(st.text(max_size=400))
        outcome = _expect_one_line_error_or_success(lambda: tok(prompt, truncate=data.draw(st.booleans())))
        counts[f"prompt {outcome}"] = counts.get(f"prompt {outcome}", 0) + 1
        d = tmp_path / "tok"
        d.mkdir(exist_ok=True)
        which = data.draw(st.sampled_from(["vocab", "merges", "both"]))
        v = _mutate(vocab, data) if which in ("vocab", "both") and data.draw(st.booleans()) else \
            (data.draw(JSON) if which != "merges" else vocab)
        (d / "vocab.json").write_text(json.dumps(v))
        lines = merges.splitlines()
        if which != "vocab":
            lines[data.draw(st.integers(0, len(lines) - 1))] = data.draw(st.text(max_size=20))
        (d / "merges.txt").write_text("\n".join(lines))

        def load_and_run():
            CLIPBPETokenizer.from_dir(d)(prompt, truncate=True)

        outcome = _expect_one_line_error_or_success(load_and_run)
        counts[f"tokenizer files {outcome}"] = counts.get(f"tokenizer files {outcome}", 0) + 1

    case()


def _fuzz_schedulers(n: int, counts: dict) -> None:
    base = json.loads((STUDENT / "manifest.json").read_text())["scheduler"]["config"]

    @settings(max_examples=n, deadline=2000, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        config = _mutate(base, data) if data.draw(st.booleans()) else data.draw(JSON)
        name = data.draw(st.sampled_from([None, *SCHEDULERS, "lms"]))
        steps = data.draw(st.integers(-2, 1200))

        def run():
            s = scheduler_from_config(config, name)
            s.set_timesteps(steps)
            x = np.zeros((1, 4, 8, 8), np.float32)
            for i in range(min(2, len(s.timesteps))):
                x = s.step(np.ones_like(x), i, s.scale_model_input(x, i))
            assert np.isfinite(x).all()

        outcome = _expect_one_line_error_or_success(run)
        counts[f"scheduler {outcome}"] = counts.get(f"scheduler {outcome}", 0) + 1

    case()


def _run_all(fake_bundle, tmp_path, n):
    counts: dict[str, int] = {}
    _fuzz_manifests(fake_bundle, n, counts)
    _fuzz_tokenizer(tmp_path, n, counts)
    _fuzz_schedulers(n, counts)
    return counts


def test_fuzzed_loaders(fake_bundle, tmp_path):
    counts = _run_all(fake_bundle, tmp_path, QUICK)
    assert sum(v for k, v in counts.items() if k.startswith("manifest")) >= QUICK // 2
    assert counts.get("manifest refused", 0) > 0 and counts.get("scheduler refused", 0) > 0


@pytest.mark.slow
def test_fuzzed_loaders_thousands(fake_bundle, tmp_path):
    counts = _run_all(fake_bundle, tmp_path, SLOW)
    print(f"\nfuzz cases ({SLOW} examples per loader): " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    assert sum(counts.values()) >= 3 * SLOW
