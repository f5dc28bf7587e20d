"""``pocketdiff bench --target adb``: time a bundle's ExecuTorch programs on an Android phone.

UNVERIFIED ON HARDWARE: no Android device has been reachable from where this was written. The
command construction and the log parsing are unit-tested against a fake ``adb``; the first run on a
real phone may need adjusting.

Steps (:func:`adb_plan` builds them; nothing here invents a device number):
1. ``adb [-s SERIAL] shell mkdir -p /data/local/tmp/pocketdiff``;
2. push ``executor_runner`` (ExecuTorch's ``examples/portable/executor_runner``, built for the
   phone's ABI with the XNNPACK backend linked in; see ``docs/benchmarks.md``) and ``chmod +x`` it;
3. push each component's ``.pte`` from the bundle's ``executorch/`` folder;
4. per component, ``executor_runner --model_path X.pte --num_executions W+K --cpu_threads N``. The
   runner feeds all-ones inputs of the program's static shapes, which is enough for latency;
5. parse its log: ``Model loaded in L ms.`` and ``Iteration i of n: T ms`` (per-iteration lines);
   runners that print only ``Model executed successfully n time(s) in T ms.`` give the mean alone.
The first ``W`` iterations are warm-up and are dropped from median/min/max.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from pocketdiff.errors import PocketdiffError
from pocketdiff.runtime.bundle import load_bundle

DEVICE_DIR = "/data/local/tmp/pocketdiff"
_LOADED = re.compile(r"Model loaded in ([\d.]+) ms")
_ITER = re.compile(r"Iteration (\d+) of (\d+): ([\d.]+) ms")
_TOTAL = re.compile(r"Model executed successfully (\d+) time\(s\) in ([\d.]+) ms")
DEVICE_PROPS = ("ro.product.model", "ro.product.manufacturer", "ro.board.platform", "ro.build.version.release",
                "ro.product.cpu.abi")


@dataclass(frozen=True)
class AdbTarget:
    runner: Path  # local executor_runner binary built for the phone
    serial: str | None = None
    adb: str = "adb"
    device_dir: str = DEVICE_DIR

    def base(self) -> list[str]:
        return [self.adb, *(["-s", self.serial] if self.serial else [])]

    def shell(self, command: str) -> list[str]:
        return [*self.base(), "shell", command]


def runner_command(target: AdbTarget, pte_name: str, threads: int, executions: int) -> str:
    """The shell line run on the phone for one program."""
    d = target.device_dir
    return (f"{shlex.quote(d + '/executor_runner')} --model_path {shlex.quote(d + '/' + pte_name)} "
            f"--num_executions {executions} --cpu_threads {threads}")


def adb_plan(target: AdbTarget, ptes: dict[str, Path], threads: int, warmup: int, repeat: int
             ) -> tuple[list[list[str]], dict[str, list[str]]]:
    """(set-up commands, {component: timing command}) as argv lists, in run order."""
    if threads < 1 or repeat < 1 or warmup < 0:
        raise PocketdiffError(f"adb bench needs threads >= 1, repeat >= 1, warmup >= 0; got {threads}, {repeat}, "
                              f"{warmup}")
    d = target.device_dir
    setup = [target.shell(f"mkdir -p {shlex.quote(d)}"),
             [*target.base(), "push", str(target.runner), f"{d}/executor_runner"],
             target.shell(f"chmod +x {shlex.quote(d + '/executor_runner')}")]
    setup += [[*target.base(), "push", str(p), f"{d}/{p.name}"] for p in ptes.values()]
    runs = {role: target.shell(runner_command(target, p.name, threads, warmup + repeat)) for role, p in ptes.items()}
    return setup, runs


def parse_runner_log(text: str, warmup: int) -> dict:
    """Timings from ``executor_runner``'s log (see the module docstring for the lines it reads)."""
    loaded = _LOADED.search(text)
    iters = [float(m.group(3)) for m in _ITER.finditer(text)]
    total = _TOTAL.search(text)
    if not iters and not total:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise PocketdiffError(f"executor_runner printed no timings (last lines: {tail or 'nothing'})")
    out = {"load_ms": float(loaded.group(1)) if loaded else None}
    if iters:
        timed = iters[warmup:] or iters
        out.update(first_call_ms=iters[0], median_ms=median(timed), min_ms=min(timed), max_ms=max(timed),
                   repeat=len(timed), warmup=len(iters) - len(timed), iterations_ms=iters)
    else:  # only the total: a mean over every execution, warm-up included
        n, ms = int(total.group(1)), float(total.group(2))
        out.update(mean_ms=ms / n, executions=n, note="runner printed only a total; mean includes warm-up")
    if out["load_ms"] is not None and "first_call_ms" in out:
        out["cold_start_s"] = (out["load_ms"] + out["first_call_ms"]) / 1000
    return out


def _run(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except FileNotFoundError:
        raise PocketdiffError(f"adb not found ({cmd[0]!r}); install Android platform-tools or pass --adb PATH") from None
    if proc.returncode != 0:
        raise PocketdiffError(f"`{' '.join(cmd)}` failed ({proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ''}")
    return proc.stdout + proc.stderr


def bench_adb(bundle_dir: str | Path, target: AdbTarget, threads: int = 4, warmup: int = 3, repeat: int = 10,
              progress=None) -> dict:
    """Push and time every ExecuTorch component of a bundle on the phone ``target`` names."""
    if not target.runner.is_file():
        raise PocketdiffError(f"executor_runner binary {target.runner} does not exist (build it for the phone first)")
    if shutil.which(target.adb) is None and not Path(target.adb).is_file():
        raise PocketdiffError(f"adb not found ({target.adb!r}); install Android platform-tools or pass --adb PATH")
    bundle = load_bundle(bundle_dir)
    comps = [c for c in bundle.components if c.target == "executorch"]
    if not comps:
        raise PocketdiffError(f"bundle {bundle.path} has no executorch components (export with --targets executorch)")
    ptes = {c.role: bundle.file(c.path) for c in comps}
    setup, runs = adb_plan(target, ptes, threads, warmup, repeat)
    device = {p: _run(target.shell(f"getprop {p}")).strip() for p in DEVICE_PROPS}
    for cmd in setup:
        _run(cmd)
    rows = []
    for i, c in enumerate(comps):
        rows.append({"component": c.role, "batch": c.inputs[0]["shape"][0],
                     **parse_runner_log(_run(runs[c.role]), warmup)})
        if progress:
            progress(i + 1, len(comps))
    return {"source": str(bundle.path), "backend": "executorch", "target": "adb", "threads": threads,
            "warmup": warmup, "repeat": repeat, "device": device, "components": rows,
            "commands": {"setup": [shlex.join(c) for c in setup], "runs": {r: shlex.join(c) for r, c in runs.items()}}}
