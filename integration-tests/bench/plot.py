"""Latency against throughput, ours and the peers', from one session's runs.

Usage:
  python3 plot.py OUT.png NAME=RUNS.jsonl [NAME=RUNS.jsonl ...]

Each RUNS.jsonl holds either `sagactl bench --json` lines (closed loop at several concurrencies
and open loop at several rates; plotted as two series) or the result lines of a ../shared/peers
script (restate/results/ts-sdk.jsonl, temporal/results/sqlite-wal-full.jsonl). Each point is one
run: x is the sagas per second it achieved, y its p50 and p99 latency, both on log scales.
Needs matplotlib (`pip install matplotlib`).

The figure in BENCHMARKS.md:
  python3 plot.py latency-vs-load.png ours=results/2026-12-04/ours.jsonl \\
    "ours, processes=results/2026-12-04/processes-sqlite.jsonl" \\
    "Restate + TS SDK=results/2026-12-04/restate-ts-sdk.jsonl" \\
    "Temporal, SQLite WAL=results/2026-12-04/temporal-sqlite-wal-full.jsonl"
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def series_of(name, rows):
    """(label, rows, rate key, tag) for one file: sagactl's runs split by loop, a peer's as is."""
    if rows and "sagas_per_sec" in rows[0]:
        closed = [r for r in rows if r["load"] == "closed"]
        opened = [r for r in rows if r["load"] == "open"]
        out = []
        if closed:
            out.append((f"{name}, closed loop", closed, "sagas_per_sec", lambda r: f"c={r['concurrency']}"))
        if opened:
            out.append((f"{name}, open loop", opened, "sagas_per_sec", lambda r: f"{r['rate']:.0f}/s"))
        return out
    return [(name, rows, "throughput_per_s", lambda r: f"c={r['concurrency']}")]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out = sys.argv[1]
    series = []
    for arg in sys.argv[2:]:
        name, sep, path = arg.rpartition("=")
        if not sep or not name:
            sys.exit(f"expected NAME=RUNS.jsonl, found {arg!r}")
        series += series_of(name, load(path))

    fig, ax = plt.subplots(figsize=(12.5, 6), dpi=110)
    for i, (label, rows, rate_key, tag) in enumerate(series):
        colour = f"C{i}"
        rows = sorted(rows, key=lambda r: r[rate_key])
        x = [r[rate_key] for r in rows]
        ax.plot(x, [r["p50_ms"] for r in rows], "o-", color=colour, label=f"{label}: p50")
        ax.plot(x, [r["p99_ms"] for r in rows], "s:", color=colour, alpha=0.6, label=f"{label}: p99")
        for r in rows:
            ax.annotate(tag(r), (r[rate_key], r["p50_ms"]), textcoords="offset points", xytext=(4, -10), fontsize=7, color=colour)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sagas per second achieved (log)")
    ax.set_ylabel("latency from start to outcome, ms (log)")
    ax.set_title("One order saga (reserve, authorize, approve; 10% compensated)\nsame 2-core machine, same session, every commit durable")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
