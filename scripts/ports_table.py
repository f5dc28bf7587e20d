"""The conformance table of docs/ports.md, from the reports the test suite's port tests wrote
(``build/ports/reports/*.json``, tests/ports.py): per check, per port (Python, Kotlin, Swift, JS), passed / failed /
not run, with the bundles it ran on. Swift has no toolchain on this machine: its column says so. The web demo's
screenshot from the browser test is copied to docs/web_demo.png.

    make ports-table     (runs the port tests first)
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PORTS = ("python", "kotlin", "swift", "js")
TITLES = {"python": "Python (reference)", "kotlin": "Kotlin (android_demo/core, JVM)",
          "swift": "Swift (ios_demo/PocketdiffCore)", "js": "JS (web_demo/src, node)"}
BEGIN, END = "<!-- ports-table:begin -->", "<!-- ports-table:end -->"
SWIFT = "not run here (no Swift toolchain)"
ORDER = ("manifest", "signature", "tokenizer", "rng", "timesteps", "scheduler:", "policy:", "step_budget", "reject: ")


def _order(check: str) -> tuple[int, str]:
    return next(i for i, p in enumerate(ORDER + ("",)) if check.startswith(p)), check


def _cell(by_status: dict[str, list[str]], show_bundles: bool) -> str:
    parts = []
    for status, bundles in sorted(by_status.items()):
        named = show_bundles and status != "not run"  # where a check ran is what matters
        parts.append(f"**{status}**" + (f" ({', '.join(sorted(set(bundles)))})" if named else ""))
    return "; ".join(parts)


def table(reports_dir: Path) -> str:
    cells: dict[str, dict[str, dict[str, list[str]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for f in sorted(reports_dir.glob("*.json")):
        r = json.loads(f.read_text())
        if "checks" not in r:
            continue
        for check, result in r["checks"].items():
            cells[check][r["port"]][result["status"]].append(r["bundle"])
    lines = ["| check | " + " | ".join(TITLES[p] for p in PORTS) + " |", "|---" * (len(PORTS) + 1) + "|"]
    for check in sorted(cells, key=_order):
        row = []
        for port in PORTS:
            by_status = cells[check].get(port)
            if port == "swift":
                row.append(SWIFT)
            elif not by_status:
                row.append("not run")
            else:
                row.append(_cell(by_status, show_bundles=not check.startswith("reject: ")))
        lines.append(f"| `{check}` | " + " | ".join(row) + " |")
    return "\n".join(lines)


def browser_line(reports_dir: Path) -> str:
    f = reports_dir / "web_demo_browser.json"
    if not f.is_file():
        return "The browser test did not run."
    r = json.loads(f.read_text())
    return (f"Web demo in headless Chromium ({r.get('ep', 'wasm')}): the shipped student's image for the fixed prompt "
            f"and seed differs from `pocketdiff generate --bundle` by at most {r['max_abs_diff']}/255 "
            f"(limit 2); {r['ms_per_step']:.2f} ms per denoising step in the browser ({r.get('user_agent', '')}), timed "
            f"inside the test run (under `make test` the other pytest worker shares the two cores).")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reports", type=Path, default=ROOT / "build" / "ports" / "reports")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "ports.md")
    args = ap.parse_args()
    body = f"{BEGIN}\n{table(args.reports)}\n\n{browser_line(args.reports)}\n{END}"
    doc = args.doc.read_text()
    if BEGIN in doc:
        doc = doc[:doc.index(BEGIN)] + body + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + body + "\n"
    args.doc.write_text(doc)
    shot = args.reports.parent / "web_demo.png"
    if shot.is_file():
        shutil.copy(shot, ROOT / "docs" / "web_demo.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
