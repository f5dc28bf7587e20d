"""A bundle manifest's structure and its paths, checked before anything in it is used.

The manifest is untrusted input (a phone downloads the bundle). :func:`check_manifest` checks every field
the runtime reads, by hand, so the Kotlin, Swift and JavaScript ports can mirror it line by line; any
violation is one :class:`PocketdiffError` naming the field (``manifest.components[2].role``), never a
``KeyError`` or ``TypeError``. Unknown keys are refused where the format is closed (the top level, each
component, each ``files`` entry, each tensor spec), so a typo cannot pass unnoticed.

:func:`resolve_inside` confines a path the manifest names to the bundle folder: a relative POSIX path with
no ``..``, no empty or ``.`` parts, no backslash or NUL, whose symlinks (followed one at a time, by
reading the link, not by stat'ing its target) all stay inside. Nothing outside the bundle is opened or
stat'ed on the way: a path is judged lexically before each ``lstat``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path, PurePosixPath

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.policies.budget import BudgetSpec

FORMAT_VERSION = 1
TARGETS = ("onnx", "coreml", "executorch")
PRECISIONS = ("fp32", "fp16")
QUANTIZATIONS = (None, "int8", "palette6", "palette4")
TOP_KEYS = {"format_version": True, "created_by": False, "export": False, "model": True, "tokenizer": True,
            "scheduler": True, "defaults": True, "sampler": False, "step_budget": False, "components": True,
            "files": True, "test_vectors": False}  # key -> required
COMPONENT_KEYS = {"name": True, "role": True, "target": True, "path": True, "precision": True,
                  "quantization": False, "inputs": True, "outputs": True, "parity": False, "meta": False}
FILE_KEYS = {"path": True, "sha256": True, "bytes": True}
TENSOR_KEYS = {"name": True, "shape": True, "dtype": True}
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_SYMLINKS = 40


def _fail(where: str, what: str) -> PocketdiffError:
    return PocketdiffError(f"bundle manifest: {where} {what}")


def _keys(obj, spec: dict[str, bool], where: str) -> dict:
    if not isinstance(obj, dict):
        raise _fail(where, f"must be an object, got {type(obj).__name__}")
    unknown = sorted(k for k in obj if k not in spec)
    if unknown:
        raise _fail(where, f"has an unknown field {unknown[0]!r}; allowed: {', '.join(spec)}")
    missing = [k for k, required in spec.items() if required and k not in obj]
    if missing:
        raise _fail(f"{where}.{missing[0]}", "is missing")
    return obj


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _int(v, where: str, minimum: int) -> int:
    if not _is_int(v) or v < minimum:
        raise _fail(where, f"must be an integer >= {minimum}, got {v!r}")
    return v


def _str(v, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(where, f"must be a non-empty string, got {v!r}")
    return v


def _ints(v, where: str, n: int) -> list:
    if not isinstance(v, list) or len(v) != n:
        raise _fail(where, f"must be a list of {n} integers, got {v!r}")
    for i, x in enumerate(v):
        _int(x, f"{where}[{i}]", 1)
    return v


def _tensors(v, where: str) -> None:
    if not isinstance(v, list):
        raise _fail(where, f"must be a list, got {type(v).__name__}")
    for i, t in enumerate(v):
        w = f"{where}[{i}]"
        _keys(t, TENSOR_KEYS, w)
        _str(t["name"], f"{w}.name")
        _str(t["dtype"], f"{w}.dtype")
        if not isinstance(t["shape"], list) or not all(_is_int(d) and d >= 0 or isinstance(d, str)
                                                        for d in t["shape"]):
            raise _fail(f"{w}.shape", f"must be a list of integers >= 0 or symbol strings, got {t['shape']!r}")


def check_path(rel, where: str) -> str:
    """A path the manifest names: relative POSIX, inside the bundle by its letters alone."""
    _str(rel, where)
    if "\\" in rel or "\0" in rel or rel.startswith("/") or re.match(r"[A-Za-z]:", rel):
        raise _fail(where, f"must be a relative POSIX path inside the bundle, got {rel!r}")
    parts = PurePosixPath(rel).parts
    if any(p in ("..", ".") for p in rel.split("/")) or "" in rel.rstrip("/").split("/") or not parts:
        raise _fail(where, f"must stay inside the bundle (no '..', '.' or empty parts), got {rel!r}")
    return rel


def resolve_inside(root: Path, rel: str, where: str) -> Path:
    """``root / rel`` with every symlink on the way followed by reading the link and checked to stay inside
    ``root`` before anything is stat'ed there. ``rel`` has passed :func:`check_path`."""
    root = Path(os.path.abspath(root))
    parts, done, hops = list(PurePosixPath(rel).parts), [], 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if not done:
                raise _fail(where, f"{rel!r} leaves the bundle through a symlink")
            done.pop()
            continue
        current = root.joinpath(*done, part)
        if os.path.islink(current):  # lstat of a path already known to be inside the bundle
            hops += 1
            target = os.readlink(current)
            if hops > MAX_SYMLINKS or os.path.isabs(target):
                raise _fail(where, f"{rel!r} is a symlink that leaves the bundle (to {target!r})")
            parts = list(PurePosixPath(target).parts) + parts  # relative to the link's folder
            continue
        done.append(part)
    return root.joinpath(*done)


def check_manifest(m, known_roles) -> dict:
    """Every field the runtime reads, with its type and range; returns ``m``. ``known_roles``: the roles this
    runtime can run (``runtime.policies.runtime_roles``)."""
    if not isinstance(m, dict):
        raise _fail("(the whole file)", f"must be a JSON object, got {type(m).__name__}")
    _keys(m, TOP_KEYS, "manifest")
    if m["format_version"] != FORMAT_VERSION:
        raise PocketdiffError(f"bundle has manifest format_version {m['format_version']!r}; this pocketdiff reads "
                              f"{FORMAT_VERSION}")
    model = _keys(m["model"], {"image_size": True, "latent_shape": True, "latent_scale_factor": True}, "manifest.model")
    _ints(model["image_size"], "manifest.model.image_size", 2)
    _ints(model["latent_shape"], "manifest.model.latent_shape", 3)
    if not _is_number(model["latent_scale_factor"]) or model["latent_scale_factor"] <= 0:
        raise _fail("manifest.model.latent_scale_factor", f"must be a number > 0, got {model['latent_scale_factor']!r}")
    tok = _keys(m["tokenizer"], {"vocab": True, "merges": True, "max_length": True}, "manifest.tokenizer")
    check_path(tok["vocab"], "manifest.tokenizer.vocab")
    check_path(tok["merges"], "manifest.tokenizer.merges")
    _int(tok["max_length"], "manifest.tokenizer.max_length", 2)
    sched = _keys(m["scheduler"], {"name": True, "diffusers_class": True, "config": True, "timesteps": True},
                  "manifest.scheduler")
    _str(sched["name"], "manifest.scheduler.name")
    _str(sched["diffusers_class"], "manifest.scheduler.diffusers_class")
    if not isinstance(sched["config"], dict):
        raise _fail("manifest.scheduler.config", "must be an object")
    if not isinstance(sched["timesteps"], list) or not all(_is_number(t) for t in sched["timesteps"]):
        raise _fail("manifest.scheduler.timesteps", "must be a list of numbers")
    defaults = _keys(m["defaults"], {"steps": True, "guidance": True}, "manifest.defaults")
    _int(defaults["steps"], "manifest.defaults.steps", 1)
    if not _is_number(defaults["guidance"]) or defaults["guidance"] < 0:
        raise _fail("manifest.defaults.guidance", f"must be a number >= 0, got {defaults['guidance']!r}")
    if "sampler" in m:
        sampler = _keys(m["sampler"], {"policy": True, "params": True}, "manifest.sampler")
        _str(sampler["policy"], "manifest.sampler.policy")
        if not isinstance(sampler["params"], dict):
            raise _fail("manifest.sampler.params", "must be an object")
    if "step_budget" in m:  # BudgetFusion's step counts, metrics and presets (runtime/policies/budget.py)
        if not isinstance(m["step_budget"], dict):
            raise _fail("manifest.step_budget", "must be an object")
        try:
            BudgetSpec.from_dict(m["step_budget"])
        except PocketdiffError as exc:
            raise _fail("manifest.step_budget", f"is invalid: {exc}") from None
    for key in ("created_by", "export"):
        if key in m and not isinstance(m[key], dict):
            raise _fail(f"manifest.{key}", "must be an object")
    if m.get("test_vectors") is not None:
        check_path(m["test_vectors"], "manifest.test_vectors")
    if not isinstance(m["components"], list) or not m["components"]:
        raise _fail("manifest.components", "must be a non-empty list")
    for i, c in enumerate(m["components"]):
        w = f"manifest.components[{i}]"
        _keys(c, COMPONENT_KEYS, w)
        _str(c["name"], f"{w}.name")
        if not isinstance(c["role"], str) or c["role"] not in known_roles:
            raise _fail(f"{w}.role", f"is {c['role']!r}, not a role this runtime knows; allowed: "
                                     f"{', '.join(sorted(known_roles))}")
        if c["target"] not in TARGETS:
            raise _fail(f"{w}.target", f"is {c['target']!r}; allowed: {', '.join(TARGETS)}")
        check_path(c["path"], f"{w}.path")
        if c["precision"] not in PRECISIONS:
            raise _fail(f"{w}.precision", f"is {c['precision']!r}; allowed: {', '.join(PRECISIONS)}")
        if c.get("quantization") not in QUANTIZATIONS:
            raise _fail(f"{w}.quantization", f"is {c['quantization']!r}; allowed: null, int8, palette6, palette4")
        _tensors(c["inputs"], f"{w}.inputs")
        _tensors(c["outputs"], f"{w}.outputs")
        for key in ("parity", "meta"):
            if c.get(key) is not None and not isinstance(c[key], dict):
                raise _fail(f"{w}.{key}", "must be an object or null")
    if not isinstance(m["files"], list):
        raise _fail("manifest.files", "must be a list")
    for i, f in enumerate(m["files"]):
        w = f"manifest.files[{i}]"
        _keys(f, FILE_KEYS, w)
        check_path(f["path"], f"{w}.path")
        if not isinstance(f["sha256"], str) or not SHA256.fullmatch(f["sha256"]):
            raise _fail(f"{w}.sha256", f"must be 64 lowercase hex digits, got {f['sha256']!r}")
        _int(f["bytes"], f"{w}.bytes", 0)
    return m
