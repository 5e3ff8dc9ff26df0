"""Run the simulation grid behind docs/scale.md and draw its figures.

Two grids, each point one ``scripts/simulate_network.py`` run (``--json``, last line):
- scale: N in {100, 1000, 10000}, with and without sortition, no adversary;
- security: adversary share in {0, 0.1, 0.2, 0.3, 0.4} at 1,000 nodes, for a few
  defences (sortition with standing, without standing, with re-checks, no sortition).

Results go to ``docs/figures/scale_results.json``; figures to ``docs/figures/*.png``.
``--plot-only`` redraws from the saved JSON.

    python scripts/plot_scale.py [--jobs 2] [--plot-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "simulate_network.py"
OUT = ROOT / "docs" / "figures"
RESULTS = OUT / "scale_results.json"

SCALE_RUNS = [
    ["--nodes=100"],
    ["--nodes=100", "--no-sortition"],
    ["--nodes=1000"],
    ["--nodes=1000", "--no-sortition"],
    ["--nodes=10000", "--requests=100"],
    ["--nodes=10000", "--no-sortition"],
]
SHARES = (0.0, 0.1, 0.2, 0.3, 0.4)
DEFENCES = {
    "sortition + standing": ["--requests=60"],
    "sortition + standing + re-check": ["--requests=60", "--recheck"],
    "sortition, no standing": ["--requests=60", "--no-standing"],
    "no sortition": ["--no-sortition", "--requests=8"],
}
KINDS = ("garbage", "withhold")


def security_runs() -> list[list[str]]:
    runs = []
    for kind in KINDS:
        for flags in DEFENCES.values():
            for f in SHARES:
                runs.append(["--nodes=1000", f"--adversary-share={f}", f"--adversary-kind={kind}", *flags])
    return runs


def run_one(args: list[str]) -> dict:
    cmd = [sys.executable, str(SCRIPT), *args, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["command"] = "python scripts/simulate_network.py " + " ".join(args) + " --json"
    print(f"{result['wall_s']:7.1f} s  {result['command']}", flush=True)
    return result


def plot(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = [r for r in results if "--adversary-share" not in r["command"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for sortition, label, style in ((True, "sortition", "o-"), (False, "no sortition", "s--")):
        rows = sorted((r for r in scale if r["sortition"] is sortition), key=lambda r: r["nodes"])
        ns = [r["nodes"] for r in rows]
        axes[0].plot(ns, [r["compute_per_request"] for r in rows], style, label=label)
        axes[1].plot(ns, [r["messages_per_node_per_request"] for r in rows], style, label=label)
        axes[2].plot(ns, [r["requests_per_s"] for r in rows], style, label=label)
    for ax, title in zip(
        axes,
        ("nodes that ran each request", "messages per node per request", "requests/s sustained"),
        strict=True,
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "scale_vs_nodes.png", dpi=110)
    plt.close(fig)

    sec = [r for r in results if "--adversary-share" in r["command"]]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True, sharey=True)
    for row, kind in enumerate(KINDS):
        for col, metric in enumerate(("captured_share", "blocked_share")):
            ax = axes[row][col]
            for name, flags in DEFENCES.items():
                rows = [r for r in sec if r["adversary_kind"] == kind and _matches(r, flags)]
                rows.sort(key=lambda r: r["adversary_share"])
                ax.plot([r["adversary_share"] for r in rows], [r[metric] for r in rows], "o-", label=name)
            ax.set_title(f"{kind}: {metric.replace('_', ' ')}")
            ax.set_xlabel("adversary share of identities")
            ax.set_ylim(-0.03, 1.03)
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "security_vs_adversary.png", dpi=110)
    plt.close(fig)


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def tables(results: list[dict]) -> str:
    """The markdown tables of docs/scale.md."""
    lines = [
        "| nodes | sortition | requests/s | compute/request | messages/node/request | bytes/node/request"
        " | p50 s | p99 s | widened | wall s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    scale = sorted(
        (r for r in results if "--adversary-share" not in r["command"]),
        key=lambda r: (r["nodes"], not r["sortition"]),
    )
    for r in scale:
        lines.append(
            f"| {r['nodes']:,} | {'yes' if r['sortition'] else 'no'} | {_fmt(r['requests_per_s'])}"
            f" | {_fmt(r['compute_per_request'], 1)} | {_fmt(r['messages_per_node_per_request'])}"
            f" | {_fmt(r['bytes_per_node_per_request'], 0)} | {_fmt(r['p50_latency_s'], 1)}"
            f" | {_fmt(r['p99_latency_s'], 1)} | {r['widened_share']:.0%} | {r['wall_s']:.0f} |"
        )
    lines += [
        "",
        "| kind | defence | adversary ids | weight share | puzzle core-h | captured | blocked | p50 s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    sec = [r for r in results if "--adversary-share" in r["command"]]
    for kind in KINDS:
        for name, flags in DEFENCES.items():
            rows = [r for r in sec if r["adversary_kind"] == kind and _matches(r, flags)]
            for r in sorted(rows, key=lambda r: r["adversary_share"]):
                lines.append(
                    f"| {kind} | {name} | {r['adversary_identities']} ({r['adversary_share']:.0%})"
                    f" | {r['adversary_weight_share']:.1%} | {r['adversary_puzzle_core_hours']:.1f}"
                    f" | {r['captured_share']:.0%} | {r['blocked_share']:.0%} | {_fmt(r['p50_latency_s'], 1)} |"
                )
    return "\n".join(lines)


def _matches(r: dict, flags: list[str]) -> bool:
    words = r["command"].split()
    return all(f in words for f in flags) and all(
        words.count(x) == flags.count(x)
        for x in ("--recheck", "--no-standing", "--no-sortition", "--commit-grace-ms=15000")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--only", choices=("scale", "security"), default=None)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    if not args.plot_only:
        runs = {"scale": SCALE_RUNS, "security": security_runs()}
        todo = [r for k, rs in runs.items() if args.only in (None, k) for r in rs]
        done = {r["command"] for r in results}
        todo = [
            a for a in todo if "python scripts/simulate_network.py " + " ".join(a) + " --json" not in done
        ]
        with ThreadPoolExecutor(args.jobs) as pool:
            for res in pool.map(run_one, todo):
                results.append(res)
                RESULTS.write_text(json.dumps(results, indent=1))
    plot(results)
    print(tables(results))


if __name__ == "__main__":
    main()
