"""The closing summary of scripts/test.sh: one block per ComfyUI version, then a total line.

Each pytest run writes its outcome to $TLORA_TEST_SUMMARY (tests/conftest.py, ``write``);
scripts/test.sh then calls ``python3 tests/run_summary.py DIR SECONDS``. Standard library only.
The last line has the form CI reads: ``total: N passed, N failed, N skipped``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CATEGORIES = (
    ("core", "core tests (torch only)"),
    ("comfyui", "ComfyUI integration tests (in-process, tiny models)"),
    ("e2e", "end-to-end tests (real ComfyUI server on 127.0.0.1)"),
    ("browser", "browser tests (real frontend in headless Chromium)"),
)


def empty() -> dict[str, dict]:
    return {name: {"passed": 0, "failed": 0, "skipped": 0, "reasons": []} for name, _ in CATEGORIES}


def write(path: str, comfyui: str, outcomes: dict[str, dict], seconds: float) -> None:
    Path(path).write_text(json.dumps({"comfyui": comfyui, "outcomes": outcomes, "seconds": round(seconds, 1)}))


def lines(runs: list[dict], seconds: int | None = None) -> list[str]:
    out = ["", "=" * 30 + " tlora-nodes test summary " + "=" * 30]
    total = {"passed": 0, "failed": 0, "skipped": 0}
    integration = {"ran": 0, "skipped": 0}
    for run in runs:
        out.append(f"{run['comfyui']} ({run['seconds'] / 60:.1f} min)")
        for name, label in CATEGORIES:
            o = run["outcomes"][name]
            ran = o["passed"] + o["failed"]
            if not ran and not o["skipped"]:
                continue
            out.append(f"  {label}: {ran} ran ({o['passed']} passed, {o['failed']} failed), {o['skipped']} skipped")
            out.extend(f"      skipped because: {reason}" for reason in o["reasons"])
            for key in total:
                total[key] += o[key]
            if name != "core":
                integration["ran"] += ran
                integration["skipped"] += o["skipped"]
    out.append(f"ComfyUI integration tests, all versions: {integration['ran']} ran, {integration['skipped']} skipped")
    if seconds is not None:
        out.append(f"whole run: {seconds / 60:.1f} min")
    out.append(f"total: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    return out


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not runs:
        print("tlora-nodes: no test run wrote a summary (pytest failed before collecting?)")
        return 1
    print("\n".join(lines(runs, int(argv[1]) if len(argv) > 1 else None)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
