"""The main panels of the Grafana dashboard, drawn from a real Prometheus: the README's picture.

    python dashboard_picture.py --prometheus http://127.0.0.1:9090 --start UNIX_TIME [--end UNIX_TIME]
                                --out dashboard.png [--data ranges.json] [--note TEXT]
    python dashboard_picture.py --data ranges.json --out dashboard.png [--note TEXT]

Run by promql.sh when PROMQL_PICTURE is set (see there), with a Python that has matplotlib: that
script starts `sagactl dev`, a Prometheus scraping it every second and load, and calls this once
its check has passed. There is no Grafana involved: this reads the panels of
deploy/grafana/dashboards/saga.json named in MAIN_PANELS, substitutes the dashboard's variables
exactly as promql_check.py does ("All" for $saga_type and $service, $__rate_interval = 1m, the
value a Grafana in front of the 15 s scrape interval data source uses), asks Prometheus'
/api/v1/query_range for each target's `expr` from --start to --end every STEP seconds, and draws
one small line chart per panel in a grid: the panel's title, one line per series named by the
target's legendFormat (with its mean and max, two of the three values the dashboard's legend table
shows; the third, the last value, would not fit beside long series names), the
panel's unit on the y axis (seconds shown as ms when under 1 s), stacked where the panel stacks,
and a caption saying where the data came from and when.

--data with --prometheus saves the query_range answers as JSON; --data alone draws from such a
file again, without Prometheus (to adjust the drawing without another run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import sys
import textwrap
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
sys.path.insert(0, str(Path(__file__).resolve().parent))
import promql_check  # noqa: E402  (the same dashboard reading and variable substitution)

# The panels an operator looks at first, by title, with what their values count (for the y axis
# of the panels whose unit is a plain number or a rate; time units label themselves).
MAIN_PANELS = [
    ("Sagas finished / s by outcome", "sagas / s"),
    ("Saga duration (completed)", None),
    ("Sagas in flight by state", "sagas"),
    ("Consumer lag by service and topic", "records"),
    ("Outbox backlog", "rows"),
    ("Dead-lettered records / s by topic and class", "records / s"),
]
COLUMNS = 2
LEGEND_PT = 8  # legend font size
MAX_LEGEND = 8  # series a legend names one by one (see draw_panel)
STEP = 2  # seconds between points
SIZE = (16, 10)  # inches, at DPI: 1600 x 1000 pixels
DPI = 100

# Grafana's classic palette, in its order; some label values get the colour they mean.
PALETTE = ["#73BF69", "#F2CC0C", "#5794F2", "#FF780A", "#F2495C", "#B877D9", "#8AB8FF", "#FADE2A",
           "#37872D", "#C4162A", "#1F60C4", "#8F3BB8"]
MEANING = {"completed": "#73BF69", "compensated": "#FF780A", "failed": "#F2495C",
           "STUCK": "#F2495C", "PARKED": "#B877D9", "p50": "#73BF69", "p95": "#F2CC0C", "p99": "#F2495C"}


def main_panels() -> tuple[str, list[dict]]:
    dash = json.loads(promql_check.DASHBOARD.read_text())
    values, _ = promql_check.dashboard_variables(dash)
    by_title = {p.get("title"): p for p in promql_check.dashboard_panels(dash)}
    out = []
    for title, counts in MAIN_PANELS:
        p = by_title.get(title)
        if p is None:
            raise SystemExit(f"picture: {promql_check.DASHBOARD}: no panel titled {title!r} (MAIN_PANELS in {Path(__file__).name})")
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        out.append({
            "id": p.get("id"), "title": title, "counts": counts,
            "unit": defaults.get("unit", "short"),
            "stacked": defaults.get("custom", {}).get("stacking", {}).get("mode", "none") != "none",
            "targets": [{"refId": t.get("refId"), "legendFormat": t.get("legendFormat", ""),
                         "expr": promql_check.substitute(t.get("expr", ""), values, f"panel {p.get('id')} {title!r}")}
                        for t in p.get("targets", [])],
        })
    return dash.get("title", "dashboard"), out


def query_ranges(base: str, panels: list[dict], start: float, end: float) -> None:
    prom = promql_check.Prometheus(base)
    for p in panels:
        for t in p["targets"]:
            data = prom.get("/api/v1/query_range",
                            [("query", t["expr"]), ("start", f"{start:.3f}"), ("end", f"{end:.3f}"), ("step", str(STEP))])
            t["result"] = data.get("result", [])


def legend(fmt: str, metric: dict) -> str:
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"
    return re.sub(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt).strip()


def fmt_num(v: float) -> str:
    if math.isnan(v):
        return "-"
    if v == 0:
        return "0"
    if abs(v) >= 100 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.3g}" if abs(v) >= 1 else f"{v:.2g}"


def time_ticks(start: float, end: float) -> list[dt.datetime]:
    """Whole multiples of a round interval, at most seven over the range."""
    every = next((s for s in (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600) if (end - start) / s <= 7), 7200)
    first = math.ceil(start / every) * every
    return [dt.datetime.fromtimestamp(t, dt.timezone.utc) for t in range(first, int(end) + 1, every)]


def draw_panel(ax, p: dict) -> tuple[list[str], int]:
    """Draws one panel; returns remarks (no data, a series without values) and the legend's rows."""
    remarks = []
    answers = [(legend(t["legendFormat"], r["metric"]), {float(ts): float(v) for ts, v in r["values"]})
               for t in p["targets"] for r in t.get("result", [])]
    # One time axis for the panel: a series that begins later (the first compensated saga) or has
    # gaps gets NaN there, which a line leaves open and a stack counts as 0.
    grid = sorted({ts for _, points in answers for ts in points})
    times = [dt.datetime.fromtimestamp(ts, dt.timezone.utc) for ts in grid]
    series = [(name, times, [points.get(ts, math.nan) for ts in grid]) for name, points in answers]  # (name, times, values)
    series.sort(key=lambda s: s[0])
    finite = [v for _, _, vals in series for v in vals if not math.isnan(v)]
    unit, scale = p["unit"], 1.0
    if unit == "s":
        scale, ylabel = (1000.0, "ms") if finite and max(abs(v) for v in finite) < 1 else (1.0, "seconds")
    elif unit == "ms":
        ylabel = "ms"
    elif unit == "percentunit":
        scale, ylabel = 100.0, "%"
    else:
        ylabel = p["counts"] or ("per second" if unit == "reqps" else "")

    ax.set_title(p["title"], fontsize=13, fontweight="bold", loc="left")
    ax.set_ylabel(ylabel, fontsize=10)
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.tick_params(labelsize=9)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=dt.timezone.utc))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if not series:
        ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", va="center", fontsize=14, color="#888888")
        ax.set_yticks([])
        ax.set_xticks([])
        return [f"{p['title']}: no data"], 0

    quiet = [all(v == 0 or math.isnan(v) for v in vals) for _, _, vals in series]
    # A panel of many series, most of them 0 throughout (counters every service registers for every
    # topic and class, say): those stay drawn, but one legend line counts them instead of naming each.
    hide_quiet = len(series) > MAX_LEGEND and any(not q for q in quiet)
    stats = []
    for _, _, vals in series:
        clean = [v * scale for v in vals if not math.isnan(v)]
        stats.append([fmt_num(sum(clean) / len(clean)), fmt_num(max(clean))] if clean else ["-"] * 2)
    shown = [i for i in range(len(series)) if not (hide_quiet and quiet[i])]
    # A table, as the dashboard's legend is: aligned within each of the legend's columns, which
    # matplotlib fills top to bottom.
    ncol = 1 if len(shown) + (len(shown) < len(series)) <= 3 else 2
    per_column = math.ceil((len(shown) + (len(shown) < len(series))) / ncol)
    labels = {}
    for c in range(ncol):
        group = shown[c * per_column:(c + 1) * per_column]
        widths = [max(len(series[i][0]) for i in group)] + [max(len(stats[i][k]) for i in group) for k in range(2)] if group else []
        for i in group:
            mean, peak = stats[i]
            labels[i] = f"{series[i][0]:<{widths[0]}}  mean {mean:>{widths[1]}}  max {peak:>{widths[2]}}"
    fill = 0.25 if p["stacked"] else (0.08 if len(series) <= 4 else 0)
    base = None  # for stacked panels: the running sum under the next series
    for i, (name, times, vals) in enumerate(series):
        vals = [v * scale for v in vals]
        if all(math.isnan(v) for v in vals):
            remarks.append(f"{p['title']}: series {name!r} has no values (NaN throughout)")
        colour = MEANING.get(name) or (PALETTE[shown.index(i) % len(PALETTE)] if i in shown else "#bbbbbb")
        label = labels.get(i, "_nolegend_")
        if p["stacked"]:
            below = base or [0.0] * len(vals)
            top = [b + (0.0 if math.isnan(v) else v) for b, v in zip(below, vals)]
            ax.plot(times, top, color=colour, linewidth=1.5, label=label)
            ax.fill_between(times, below, top, color=colour, alpha=fill, linewidth=0)
            base = top
        else:
            ax.plot(times, vals, color=colour, linewidth=1.5, label=label)
            if fill:
                ax.fill_between(times, 0, [0.0 if math.isnan(v) else v for v in vals], color=colour, alpha=fill, linewidth=0)
    if p["stacked"]:
        ax.set_ylabel(f"{ylabel} (stacked)", fontsize=10)
    top = max((v * scale for v in finite), default=0)
    if base is not None:
        top = max(top, max(base))
    ax.set_ylim(bottom=0, top=top * 1.15 if top > 0 else 1)
    if unit in ("short", "") and top < 10:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(series[0][1][0], series[0][1][-1])
    ax.set_xticks(time_ticks(series[0][1][0].timestamp(), series[0][1][-1].timestamp()))
    handles, labels = ax.get_legend_handles_labels()
    if len(shown) < len(series):
        handles.append(Line2D([], [], linestyle="none"))
        labels.append(f"+ {len(series) - len(shown)} more series, 0 throughout")
    # Below the chart, as the dashboard's legend tables are (draw() puts it in place).
    ax.legend(handles, labels, loc="upper left", ncol=ncol, frameon=False, handlelength=1.2,
              borderaxespad=0, borderpad=0, columnspacing=1.5, labelspacing=0.25,
              prop={"family": "DejaVu Sans Mono", "size": LEGEND_PT})
    return remarks, per_column


def draw(title: str, data: dict, out: Path, note: str) -> list[str]:
    panels = data["panels"]
    fig = plt.figure(figsize=SIZE, dpi=DPI)
    axes = [fig.add_axes((0, 0, 1, 1)) for _ in panels]
    remarks, legend_rows = [], []
    for ax, p in zip(axes, panels):
        r, n = draw_panel(ax, p)
        remarks += r
        legend_rows.append(n)
    # The grid, in pixels from the bottom left: the figure's title above, the caption below; in each
    # cell the panel's title, the chart, its time axis, and its legend, which can be wider than the
    # chart (constrained layout would narrow every chart to make room for the widest legend).
    width, height = SIZE[0] * DPI, SIZE[1] * DPI
    top, bottom = height - 50, 70
    rows = math.ceil(len(panels) / COLUMNS)
    row_height = (top - bottom) / rows
    line = LEGEND_PT * 1.25 * DPI / 72  # a legend row, with labelspacing 0.25
    for i, ax in enumerate(axes):
        r, c = divmod(i, COLUMNS)
        cell_top = top - r * row_height
        under = 34 + line * max(legend_rows[r * COLUMNS:(r + 1) * COLUMNS]) + 22  # time axis, legend, gap
        x0, x1 = c * width / COLUMNS + 70, (c + 1) * width / COLUMNS - 30
        y0, y1 = cell_top - row_height + under, cell_top - 28
        ax.set_position((x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height))
        if ax.get_legend():
            # From the cell's left edge, as wide as the cell: it may be wider than the chart.
            ax.get_legend().set_bbox_to_anchor(((x0 - 55) / width, (y0 - 34) / height), transform=fig.transFigure)
    start = dt.datetime.fromtimestamp(data["start"], dt.timezone.utc)
    end = dt.datetime.fromtimestamp(data["end"], dt.timezone.utc)
    fig.text(12 / width, 1 - 12 / height, f"{title} dashboard: main panels", fontsize=15, fontweight="bold", va="top")
    caption = (f"Rendered by integration-tests/observability/dashboard_picture.py (run by promql.sh) from Prometheus data of a "
               f"`sagactl dev` run on {start:%Y-%m-%d}, {start:%H:%M:%S} to {end:%H:%M:%S} UTC, one point every {data['step']} s.\n"
               f"Queries, titles and legends from deploy/grafana/dashboards/saga.json, as Grafana sends them with "
               f"$saga_type and $service at All and $__rate_interval = {promql_check.BUILTINS['__rate_interval']} "
               f"(its 15 s scrape interval data source): rates rise over the first minute of load.")
    if note:
        caption += "\n" + "\n".join(textwrap.wrap(note, 220))
    fig.text(12 / width, 10 / height, caption, fontsize=9, color="#444444", va="bottom", linespacing=1.4)
    fig.savefig(out, dpi=DPI, facecolor="white")
    plt.close(fig)
    return remarks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--prometheus", help="base URL, e.g. http://127.0.0.1:9090 (without it: --data is read)")
    parser.add_argument("--start", type=float, help="unix time the picture starts at (with --prometheus)")
    parser.add_argument("--end", type=float, help="unix time it ends at (default: now)")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--data", type=Path, help="JSON of the query_range answers: written with --prometheus, else read")
    parser.add_argument("--note", default="", help="a second caption line, e.g. what the load was")
    args = parser.parse_args()

    title, panels = main_panels()
    if args.prometheus:
        if args.start is None:
            parser.error("--prometheus needs --start")
        end = args.end or time.time()
        query_ranges(args.prometheus, panels, args.start, end)
        data = {"start": args.start, "end": end, "step": STEP, "panels": panels}
        if args.data:
            args.data.write_text(json.dumps(data))
    elif args.data:
        data = json.loads(args.data.read_text())
    else:
        parser.error("give --prometheus (and --start) or --data")

    remarks = draw(title, data, args.out, args.note)
    for r in remarks:
        print(f"picture: note: {r}")
    series = sum(len(t.get("result", [])) for p in data["panels"] for t in p["targets"])
    print(f"picture: {len(data['panels'])} panels, {series} series, {data['end'] - data['start']:.0f} s "
          f"-> {args.out} ({args.out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
