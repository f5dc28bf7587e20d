"""The Python column of the ports' conformance table: the runtime checked against a bundle's ``test_vectors.json``
exactly as the Kotlin (``android_demo/core/.../tools/Conformance.kt``) and JavaScript
(``web_demo/tools/conformance.mjs``) runners check their ports (``docs/ports.md``).

The replay check runs the runtime's own loop and policy (:class:`~pocketdiff.runtime.sampler.RuntimePipeline`) on
:class:`ReplaySession`\\ s, which answer each call with the outputs the vectors recorded and check the feeds they
are given, so the loop under test is the one every generation runs. ``checks`` maps a check name to
``{"status": "passed" | "failed" | "not run", "detail": ...}``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Callable

import numpy as np

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.bundle import load_bundle
from pocketdiff.runtime.policies import BudgetSpec, make_policy
from pocketdiff.runtime.rng import initial_latents
from pocketdiff.runtime.sampler import RuntimePipeline
from pocketdiff.runtime.schedulers import scheduler_from_config
from pocketdiff.runtime.sessions import TensorSpec
from pocketdiff.runtime.signing import load_public_key

PASSED, FAILED, NOT_RUN = "passed", "failed", "not run"
ATOL, RTOL = 1e-3, 1e-3  # replay feeds: recorded first values and mean |x|
SCHEDULER_ATOL = 1e-4


class Mismatch(Exception):
    """A port's number differs from the vectors' (the check fails with this message)."""


def decode(record: dict) -> np.ndarray:
    """A tensor record's whole tensor (base64 little-endian float32, row-major)."""
    if "data" not in record:
        raise KeyError("data")
    return np.frombuffer(base64.b64decode(record["data"]), dtype="<f4").reshape(record["shape"]).astype(np.float32)


def close_to(x: np.ndarray, record: dict, what: str, atol: float = ATOL, rtol: float = RTOL) -> None:
    """``x`` against a record's shape (when it has one), first values and mean |x|."""
    x = np.asarray(x, dtype=np.float64)
    if "shape" in record and list(x.shape) != list(record["shape"]):
        raise Mismatch(f"{what}: shape {list(x.shape)}, vectors {record['shape']}")
    first = np.asarray(record["first_values"], dtype=np.float64)
    got = x.reshape(-1)[:len(first)]
    if not np.allclose(got, first, atol=atol, rtol=rtol):
        raise Mismatch(f"{what}: first values differ by up to {np.abs(got - first).max():.3g}")
    if abs(np.abs(x).mean() - record["mean_abs"]) > atol + rtol * abs(record["mean_abs"]):
        raise Mismatch(f"{what}: mean |x| {np.abs(x).mean():.6g}, vectors {record['mean_abs']:.6g}")


class ReplaySession:
    """One role's session answering with the recorded outputs of the next recorded call (shared ``cursor``)."""

    def __init__(self, role: str, inputs, outputs, calls: list, cursor: list[int]):
        self.role, self.inputs, self.outputs, self.calls, self.cursor = role, inputs, outputs, calls, cursor
        self.fixed_batch, self.path = None, f"replay:{role}"

    def run(self, feeds: dict) -> dict:
        i = self.cursor[0]
        if i >= len(self.calls):
            raise Mismatch(f"call {i} ({self.role}): the vectors recorded only {len(self.calls)} calls")
        rec = self.calls[i]
        if rec["role"] != self.role:
            raise Mismatch(f"call {i}: the loop called {self.role}, the vectors {rec['role']}")
        if set(feeds) != set(rec["inputs"]):
            raise Mismatch(f"call {i} ({self.role}): feeds {sorted(feeds)}, vectors {sorted(rec['inputs'])}")
        for name, value in feeds.items():
            close_to(value, rec["inputs"][name], f"call {i} ({self.role}) input {name}")
        self.cursor[0] += 1
        return {name: decode(r) for name, r in rec["outputs"].items()}


def _check(checks: dict, name: str, fn: Callable[[], str | None]) -> None:
    try:
        detail = fn()
        checks[name] = {"status": PASSED, "detail": detail or ""}
    except (Mismatch, PocketdiffError, AssertionError) as exc:
        checks[name] = {"status": FAILED, "detail": str(exc)}


def _not_run(checks: dict, name: str, why: str) -> None:
    checks[name] = {"status": NOT_RUN, "detail": why}


def _tokenizer(bundle, vectors) -> str:
    tok = bundle.tokenizer()
    for t in vectors["tokens"]:
        got = tok(t["prompt"], truncate=True).input_ids
        if got != t["input_ids"]:
            raise Mismatch(f"{t['prompt']!r}: ids {got[:12]}..., vectors {t['input_ids'][:12]}...")
    return f"{len(vectors['tokens'])} prompts"


def _rng(vectors) -> str:
    for r in vectors["initial_latents"]:
        got = initial_latents(r["seed"], tuple(r["shape"])).reshape(-1)[:len(r["first_values"])]
        if not np.allclose(got, r["first_values"], atol=1e-6, rtol=0):
            raise Mismatch(f"seed {r['seed']}: draws differ by {np.abs(got - r['first_values']).max():.3g}")
    return f"seeds {[r['seed'] for r in vectors['initial_latents']]}"


def _timesteps(manifest, vectors) -> str:
    sched = scheduler_from_config(manifest["scheduler"]["config"])
    sched.set_timesteps(vectors["timesteps"]["steps"])
    if [int(t) for t in sched.timesteps] != [int(t) for t in vectors["timesteps"]["values"]]:
        raise Mismatch(f"timesteps {sched.timesteps.tolist()}, vectors {vectors['timesteps']['values']}")
    return f"{vectors['timesteps']['steps']} steps"


def _scheduler(entry: dict) -> str:
    sched = scheduler_from_config(entry["config"], entry["name"])
    sched.set_timesteps(entry["steps"])
    if not np.allclose(np.asarray(sched.timesteps, np.float64), entry["timesteps"]):
        raise Mismatch(f"timesteps {np.asarray(sched.timesteps).tolist()}, vectors {entry['timesteps']}")
    if abs(float(sched.init_noise_sigma) - entry["init_noise_sigma"]) > 1e-4 * max(1.0, entry["init_noise_sigma"]):
        raise Mismatch(f"init_noise_sigma {float(sched.init_noise_sigma)}, vectors {entry['init_noise_sigma']}")
    for r in entry["records"]:
        sample = decode(r["sample"])
        close_to(sched.scale_model_input(sample, r["index"]), r["scaled_sample"], f"step {r['index']} scaled sample",
                 SCHEDULER_ATOL, SCHEDULER_ATOL)
        prev, want = sched.step(decode(r["model_output"]), r["index"], sample), decode(r["prev_sample"])
        if not np.allclose(prev, want, atol=SCHEDULER_ATOL, rtol=SCHEDULER_ATOL):  # the whole tensor
            raise Mismatch(f"step {r['index']}: prev sample differs by {np.abs(prev - want).max():.3g}")
    return f"{len(entry['records'])} steps"


def _replay(bundle, vectors) -> str:
    m, s, replay = bundle.manifest, vectors["sampler"], vectors["replay"]
    calls = replay["calls"]
    if any("data" not in r for c in calls for r in c["outputs"].values()):
        raise KeyError("data")
    target = "onnx" if "onnx" in bundle.targets else bundle.targets[0]  # the specs (names, dtypes) the app's sessions have
    specs = {c.role: c for c in bundle.components if c.target == target}
    cursor = [0]
    sessions = {role: ReplaySession(role, [TensorSpec.from_dict(i) for i in c.inputs],
                                    [TensorSpec.from_dict(o) for o in c.outputs], calls, cursor)
                for role, c in specs.items()}
    policy = make_policy(s["policy"], s["params"])
    budget = BudgetSpec.from_dict(m["step_budget"]) if "step_budget" in m else None
    runtime = RuntimePipeline(bundle.tokenizer(), sessions, m["scheduler"]["config"], tuple(m["model"]["latent_shape"]),
                              m["model"]["latent_scale_factor"], policy, budget)
    latents: dict[int, np.ndarray] = {}
    result = runtime.generate(s["prompt"], steps=s["steps"], guidance=s["guidance"], seed=s["seed"],
                              on_step=lambda i, x: latents.__setitem__(i, x.copy()))
    trace = [c.to_dict(with_time=False) for c in result.trace]
    if trace != s["trace"] or cursor[0] != len(calls):
        raise Mismatch(f"trace {trace}, vectors {s['trace']}")
    tol = s["tolerance"]
    close_to(latents[0], s["latent_after_step_1"], "latent after step 1", tol, 0)
    close_to(latents[max(latents)], s["latent_after_last_step"], "latent after the last step", tol, 0)
    want = np.frombuffer(base64.b64decode(replay["image"]["data"]), np.uint8).reshape(replay["image"]["shape"])
    diff = int(np.abs(result.image.astype(int) - want.astype(int)).max())
    if diff > 1:
        raise Mismatch(f"image differs by {diff}/255")
    return f"{len(trace)} calls, image max diff {diff}/255"


def _step_budget(bundle, vectors) -> str:
    spec = BudgetSpec.from_dict(bundle.manifest["step_budget"])
    targets = spec.targets("auto")
    for v in vectors["step_budget"]:
        if {k: round(x, 9) for k, x in targets.items()} != {k: round(x, 9) for k, x in v["targets"].items()}:
            raise Mismatch(f"{v['prompt']!r}: targets {targets}, vectors {v['targets']}")
        steps = spec.choose(np.asarray(v["quality"]), targets)
        if steps != v["steps"]:
            raise Mismatch(f"{v['prompt']!r}: {steps} steps, vectors {v['steps']}")
    return f"{len(vectors['step_budget'])} prompts"


def run_checks(path: str | Path, trusted_key: str | Path | None = None) -> dict:
    """Every check of ``docs/ports.md`` on the bundle at ``path``: ``{"port": "python", "bundle", "checks"}``."""
    checks: dict[str, dict] = {}
    key = load_public_key(trusted_key) if trusted_key else None
    try:
        bundle = load_bundle(path, verify=True, trusted_key=key)
    except PocketdiffError as exc:
        checks["manifest"] = {"status": FAILED, "detail": str(exc)}
        return {"port": "python", "bundle": str(path), "checks": checks}
    checks["manifest"] = {"status": PASSED, "detail": f"{len(bundle.manifest['files'])} files verified"}
    if key is not None:
        checks["signature"] = {"status": PASSED, "detail": "Ed25519 over manifest.json"}
    else:
        _not_run(checks, "signature", "no trusted key given")
    vectors = json.loads(bundle.file(bundle.manifest["test_vectors"]).read_text())
    _check(checks, "tokenizer", lambda: _tokenizer(bundle, vectors))
    _check(checks, "rng", lambda: _rng(vectors))
    _check(checks, "timesteps", lambda: _timesteps(bundle.manifest, vectors))
    for entry in vectors.get("schedulers", []):
        _check(checks, f"scheduler:{entry['name']}", lambda e=entry: _scheduler(e))
    name = f"policy:{vectors['sampler']['policy']}"
    if "replay" not in vectors:
        _not_run(checks, name, "the vectors have no replay (written before the format had one)")
    else:
        try:
            _check(checks, name, lambda: _replay(bundle, vectors))
        except KeyError:
            _not_run(checks, name, "a recorded output is too large to be stored whole")
    if "step_budget" in vectors:
        _check(checks, "step_budget", lambda: _step_budget(bundle, vectors))
    else:
        _not_run(checks, "step_budget", "the bundle has no step-budget predictor")
    return {"port": "python", "bundle": str(path), "checks": checks}
