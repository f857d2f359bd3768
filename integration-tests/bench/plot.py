"""Latency against throughput: ours (closed and open loop) and the peers', from one session's runs.

Usage:
  python3 plot.py OUT.png OURS.jsonl [PEER_NAME=PEER.jsonl ...]

OURS.jsonl holds `sagactl bench --json` lines (closed loop at several concurrencies, open loop at
several rates); each PEER.jsonl holds the result lines of a ../shared/peers script (for example
restate/results/ts-sdk.jsonl). Each point is one run: x is the sagas per second it achieved,
y its p50 and p99 latency (log scale). Needs matplotlib (`pip install matplotlib`).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, ours = sys.argv[1], load(sys.argv[2])
    peers = []
    for arg in sys.argv[3:]:
        name, sep, path = arg.partition("=")
        if not sep:
            sys.exit(f"expected PEER_NAME=PEER.jsonl, found {arg!r}")
        peers.append((name, load(path)))

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    series = [
        ("ours, closed loop", [r for r in ours if r["load"] == "closed"], "sagas_per_sec", "concurrency", "C0"),
        ("ours, open loop", [r for r in ours if r["load"] == "open"], "sagas_per_sec", "rate", "C2"),
    ]
    series += [(name, rows, "throughput_per_s", "concurrency", f"C{3 + i}") for i, (name, rows) in enumerate(peers)]
    for name, rows, rate_key, label_key, colour in series:
        rows = sorted(rows, key=lambda r: r[rate_key])
        if not rows:
            continue
        x = [r[rate_key] for r in rows]
        ax.plot(x, [r["p50_ms"] for r in rows], "o-", color=colour, label=f"{name}: p50")
        ax.plot(x, [r["p99_ms"] for r in rows], "s--", color=colour, alpha=0.6, label=f"{name}: p99")
        for r in rows:
            tag = f"{r[label_key]:.0f}/s" if label_key == "rate" else f"c={r[label_key]}"
            ax.annotate(tag, (r[rate_key], r["p50_ms"]), textcoords="offset points", xytext=(4, -10), fontsize=7, color=colour)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sagas per second achieved (log)")
    ax.set_ylabel("latency, ms (log)")
    ax.set_title("One order saga (reserve, authorize, approve; 10% compensated), same machine, same session")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
