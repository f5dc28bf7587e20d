"""The app ports' runners, driven from the test suite (``docs/ports.md``): the Kotlin core on the JVM (compiled once
per session with Debian's kotlinc by ``android_demo/core/jvm_test.sh``), the JS core on node, and the Python
runtime's own (``pocketdiff.runtime.conformance``). Every conformance report is also written to
``build/ports/reports/<bundle name>.<port>.json``, which ``scripts/ports_table.py`` turns into the docs' table.

``make ports-deps`` installs what they need (kotlin, gson, junit4, chromium from Debian; web_demo's npm packages);
a missing tool fails the test that needs it with that advice, never skips it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pocketdiff.runtime.conformance import FAILED, run_checks

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "build" / "ports" / "reports"
KOTLIN_CORE = ROOT / "android_demo" / "core"
WEB = ROOT / "web_demo"
JAVA_LIBS = ("/usr/share/java/gson.jar",)
PORTS = ("python", "kotlin", "js")
ADVICE = "run `make ports-deps` (Debian's kotlin, gson, junit4, chromium; web_demo's npm packages)"


class PortsMissing(AssertionError):
    pass


def kotlin_stdlib() -> str:
    for p in ("/usr/share/java/kotlin-stdlib.jar", "/usr/share/kotlin/lib/kotlin-stdlib.jar"):
        if Path(p).is_file():
            return p
    raise PortsMissing(f"kotlin-stdlib.jar not found: {ADVICE}")


@dataclass
class Ports:
    """Built runners: ``kotlin_jar`` (the core, compiled once), node with web_demo's packages."""

    kotlin_jar: Path

    def command(self, port: str, verb: str, bundle: Path, key: Path | None = None) -> list[str]:
        extra = ["--trusted-key", str(key)] if key else []
        if port == "kotlin":
            cp = ":".join([str(self.kotlin_jar), *JAVA_LIBS, kotlin_stdlib()])
            return ["java", "-cp", cp, "pocketdiff.core.tools.ConformanceKt", verb, str(bundle), *extra]
        if port == "js":
            return ["node", str(WEB / "tools" / "conformance.mjs"), verb, str(bundle), *extra]
        raise ValueError(port)

    def run(self, port: str, verb: str, bundle: Path, key: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(port, verb, bundle, key), capture_output=True, text=True, timeout=300)

    def conformance(self, port: str, bundle: Path, name: str, key: Path | None = None) -> dict:
        """One port's report on ``bundle`` (saved under ``name``); Python's from the runtime itself."""
        if port == "python":
            report = run_checks(bundle, key)
        else:
            proc = self.run(port, "conformance", bundle, key)
            try:
                report = json.loads(proc.stdout)
            except json.JSONDecodeError:
                raise AssertionError(f"{port} runner printed no report (exit {proc.returncode}):\n"
                                     f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}") from None
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / f"{name}.{port}.json").write_text(json.dumps({**report, "bundle": name}, indent=1) + "\n")
        return report


def record_check(port: str, check: str, status: str, detail: str) -> None:
    """One check that is not part of a conformance run (a hostile bundle refused), for the docs' table."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", check.lower()).strip("-")
    report = {"port": port, "bundle": slug, "checks": {check: {"status": status, "detail": detail}}}
    (REPORTS / f"{slug}.{port}.json").write_text(json.dumps(report, indent=1) + "\n")


def failures(report: dict) -> dict:
    return {k: v["detail"] for k, v in report["checks"].items() if v["status"] == FAILED}


def check_all_ports(ports: Ports, bundle: Path, name: str, expect: tuple[str, ...] = (), key: Path | None = None
                    ) -> dict[str, dict]:
    """Every port's conformance on ``bundle``: nothing failed, and each check named in ``expect`` passed."""
    reports = {port: ports.conformance(port, bundle, name, key) for port in PORTS}
    for port, report in reports.items():
        assert not failures(report), f"{port} port on {name}: {failures(report)}"
        for check in expect:
            status = report["checks"].get(check, {}).get("status")
            assert status == "passed", f"{port} port on {name}: {check} is {status}: {report['checks'].get(check)}"
    return reports


def build_ports(out: Path) -> Ports:
    """Compile the Kotlin core and its tests (JUnit runs in ``test_ports``), check node and web_demo's packages."""
    for tool in ("kotlinc", "java", "node"):
        if shutil.which(tool) is None:
            raise PortsMissing(f"{tool} not found: {ADVICE}")
    if not (WEB / "node_modules" / "onnxruntime-web").is_dir():
        raise PortsMissing(f"web_demo/node_modules is not installed: {ADVICE}")
    proc = subprocess.run(["bash", str(KOTLIN_CORE / "jvm_test.sh"), str(out), "--build-only"], capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"the Kotlin core did not compile:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return Ports(out / "core.jar")
