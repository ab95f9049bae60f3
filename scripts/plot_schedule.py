"""Draw the rank schedule r(t) of SPEC §2 as docs/schedule.svg, from tlora_core itself.

    .venv/bin/python scripts/plot_schedule.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tlora_core import RankSchedule  # noqa: E402

W, H, M = 640, 300, 48  # canvas and margin (px)
CURVES = [(RankSchedule(64, 32, 1.0), "#1f6feb", "R=64, r_min=32, p=1 (paper)"),
          (RankSchedule(64, 32, 2.0), "#d97706", "p=2"),
          (RankSchedule(64, 16, 1.0), "#16a34a", "r_min=16")]


def x(t: float) -> float:
    return M + (W - 2 * M) * t / 1000


def y(r: float) -> float:
    return H - M - (H - 2 * M) * r / 64


def main() -> None:
    t = torch.arange(1000)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<line x1="{M}" y1="{H - M}" x2="{W - M}" y2="{H - M}" stroke="black"/>',
             f'<line x1="{M}" y1="{M}" x2="{M}" y2="{H - M}" stroke="black"/>']
    for tick in range(0, 1001, 200):
        parts.append(f'<text x="{x(tick)}" y="{H - M + 16}" text-anchor="middle">{tick}</text>')
    for tick in (0, 16, 32, 48, 64):
        parts.append(f'<text x="{M - 6}" y="{y(tick) + 4}" text-anchor="end">{tick}</text>')
    parts.append(f'<text x="{W / 2}" y="{H - 10}" text-anchor="middle">timestep t (0 = clean, 999 = pure noise)</text>')
    parts.append(f'<text x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" text-anchor="middle">active rank r(t)</text>')
    for i, (schedule, colour, label) in enumerate(CURVES):
        ranks = schedule.rank_at(t).tolist()
        steps = [(0, ranks[0])]  # a step function: one point where the rank changes, one before it
        for a in range(1, 1000):
            if ranks[a] != ranks[a - 1]:
                steps += [(a, ranks[a - 1]), (a, ranks[a])]
        steps.append((1000, ranks[-1]))
        points = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in steps)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{W - M - 4}" y="{M + 16 * i}" text-anchor="end" fill="{colour}">{label}</text>')
    parts.append("</svg>")
    out = ROOT / "docs" / "schedule.svg"
    out.write_text("\n".join(parts) + "\n")
    print(out)


if __name__ == "__main__":
    main()
