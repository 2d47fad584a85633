"""Pictures of a search: Pareto fronts, hypervolume history, lineage graph, and an
interactive HTML page of the front.

Everything here draws on ``matplotlib.figure.Figure`` objects rendered by the Agg canvas;
``matplotlib.pyplot`` is never imported, so no display is needed, the process's matplotlib
backend is left alone and figures are freed as soon as they are written. The HTML page is
self-contained (inline SVG, CSS and JavaScript; no CDN, no URL of any kind).

Each function writes one file (creating its directory) and returns its path.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from certevo.population.sparsity_text import format_sparsity

from certevo.search.lineage_plot import lineage_figure

__all__ = ["activation_text", "front_html", "history_figure", "plot_front", "plot_history", "plot_lineage"]

FRONT_COLOR = "#c0392b"
DPI = 110


# -- helpers ----------------------------------------------------------------------------
def _points(front_points: Sequence[Any]) -> list[tuple[str, float, float]]:
    """(id, sparsity, certified) from history entries ``[id, s, c]``, pairs ``(s, c)`` or
    front.json rows (dicts with ``sparsity`` and ``certified_accuracy``), sorted by sparsity."""
    out: list[tuple[str, float, float]] = []
    for i, p in enumerate(front_points):
        if isinstance(p, Mapping):
            out.append((str(p.get("id", i)), float(p["sparsity"]), float(p["certified_accuracy"])))
        elif len(p) == 2:
            out.append((str(i), float(p[0]), float(p[1])))
        elif len(p) >= 3:
            out.append((str(p[0]), float(p[1]), float(p[2])))
        else:
            raise ValueError(
                f"a front point must be [id, sparsity, certified], (sparsity, certified) or a front.json row; got {p!r}"
            )
    return sorted(out, key=lambda t: (t[1], -t[2]))


def _staircase(ax: Any, pts: list[tuple[str, float, float]], **style: Any) -> None:
    """The attainment surface of a maximised 2-D front: over (s_i, s_i+1] the best
    certified accuracy reachable at that sparsity is c_i+1 (``where="pre"``)."""
    if not pts:
        return
    xs = [100 * s for _, s, _ in pts]
    ys = [100 * c for _, _, c in pts]
    ax.step(xs, ys, where="pre", **style)


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    # the titles (with what the certified accuracy refers to) also as the PNG's Title text
    titles = [fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)]
    fig.savefig(out, dpi=DPI, format="png", metadata={"Title": " | ".join(t for t in titles if t) or None})
    return out


def activation_text(pattern: Any) -> str:
    """A short text for a genome's activation pattern (``Genome.activation_pattern()``):
    ``relu,tanh`` per layer; a per-neuron layer shows its counts, e.g. ``relu×12/tanh×4``."""
    if isinstance(pattern, str):
        return pattern
    parts = []
    for layer in pattern or ():
        if isinstance(layer, str):
            parts.append(layer)
        else:
            counts = Counter(map(str, layer))
            parts.append("/".join(f"{name}×{n}" for name, n in sorted(counts.items())))
    return ",".join(parts)


# -- Pareto front -------------------------------------------------------------------------
def plot_front(front_points: Sequence[Any], path: str | Path, *, history: Sequence[Mapping[str, Any]] | None = None,
               title: str = "Pareto front: sparsity vs certified accuracy") -> Path:
    """The front as a step line with markers (x: sparsity %, y: certified accuracy %).

    ``front_points``: ``[id, sparsity, certified]`` lists (as in a generation summary's
    ``"front"``), ``(sparsity, certified)`` pairs, or front.json rows. ``history``: the
    per-generation summaries (``search.state.history``); their fronts are drawn faded,
    coloured by generation, with a colorbar.
    """
    pts = _points(front_points)
    fig = Figure(figsize=(7.0, 4.8), layout="constrained")
    ax = fig.add_subplot()
    if history:
        gens = [int(h.get("generation", i)) for i, h in enumerate(history)]
        # the top of the scale is left unused so the latest earlier front is not pale yellow
        lo, hi = min(gens), max(gens)
        norm = Normalize(vmin=lo, vmax=hi + max(1.0, 0.25 * (hi - lo)))
        mappable = ScalarMappable(norm=norm, cmap="viridis")
        for gen, entry in zip(gens, history):
            earlier = _points(entry.get("front", []))
            color = mappable.to_rgba(gen)
            _staircase(ax, earlier, color=color, alpha=0.45, linewidth=1.0)
            ax.scatter([100 * s for _, s, _ in earlier], [100 * c for _, _, c in earlier], color=color, alpha=0.45, s=12)
        bar = fig.colorbar(mappable, ax=ax, label="generation (earlier fronts)")
        bar.ax.set_ylim(lo - 0.5 if hi == lo else lo, hi + 0.5 if hi == lo else hi)
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if pts:
        _staircase(ax, pts, color=FRONT_COLOR, linewidth=2.0, label="front")
        ax.scatter([100 * s for _, s, _ in pts], [100 * c for _, _, c in pts], color=FRONT_COLOR, s=36, zorder=5,
                   edgecolors="black", linewidths=0.5)
        ax.legend(loc="upper right")
    else:
        ax.text(0.5, 0.5, "no successful candidate yet", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    xs = [100 * s for _, s, _ in pts] + [100 * s for h in history or () for _, s, _ in _points(h.get("front", []))]
    if xs:
        lo, hi = min(xs), max(xs)
        pad = max(1.0, 0.05 * (hi - lo))
        ax.set_xlim(max(0.0, lo - pad), min(100.0, hi + pad))
    ax.set_ylim(bottom=0)
    return _save(fig, path)


def history_figure(history: Sequence[Mapping[str, Any]], *, title: str = "search progress") -> Figure:
    """Per generation: hypervolume (top), the best certified accuracy among the front's
    members at least as sparse as each level (``best_certified`` of a summary; middle) and
    the front size (bottom)."""
    gens = [int(h.get("generation", i)) for i, h in enumerate(history)]
    fig = Figure(figsize=(7.0, 7.0), layout="constrained")
    top, middle, bottom = fig.subplots(3, 1, sharex=True)
    top.plot(gens, [float(h["hypervolume"]) for h in history], marker="o", color="#1f77b4")
    top.set_ylabel("hypervolume")
    top.set_title(title)
    top.grid(True, alpha=0.3)
    levels = list(dict.fromkeys(level for h in history for level in (h.get("best_certified") or {})))
    for level in sorted(levels, key=float):
        points = [(g, 100 * float(h["best_certified"][level])) for g, h in zip(gens, history)
                  if level in (h.get("best_certified") or {})]
        middle.plot([g for g, _ in points], [v for _, v in points], marker=".",
                    label=f"sparsity >= {100 * float(level):g}%")
    middle.set_ylabel("best certified (%)")
    middle.set_ylim(bottom=0)
    middle.grid(True, alpha=0.3)
    if levels:
        middle.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    bottom.bar(gens, [int(h["front_size"]) for h in history], color="#7f8c8d")
    bottom.set_ylabel("front size")
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_xlabel("generation")
    bottom.grid(True, axis="y", alpha=0.3)
    if gens:
        bottom.set_xticks(gens if len(gens) <= 25 else gens[:: math.ceil(len(gens) / 25)])
    else:
        top.text(0.5, 0.5, "no generation yet", transform=top.transAxes, ha="center", va="center")
    return fig


def plot_history(history: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "search progress") -> Path:
    """The :func:`history_figure` of ``history`` as a PNG."""
    return _save(history_figure(history, title=title), path)


# -- lineage ------------------------------------------------------------------------------
def plot_lineage(lineage: Any, ids: Sequence[str], path: str | Path, *,
                 title: str = "ancestry of the final front") -> Path:
    """The ancestry graph of ``ids`` (normally the final front): x = generation, y =
    sparsity, colour = certified accuracy, faint parent -> child lines, front members as
    labelled stars (see :mod:`certevo.search.lineage_plot`). ``lineage`` is a
    :class:`certevo.population.lineage.Lineage`."""
    return _save(lineage_figure(lineage, ids, title=title), path)


# -- interactive HTML ---------------------------------------------------------------------
_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; }
#plot { border: 1px solid #ccc; background: #fff; }
.pt { fill: #c0392b; stroke: #000; stroke-width: 0.6; cursor: pointer; }
.pt.hl { fill: #f1c40f; }
.axis { stroke: #444; stroke-width: 1; }
.grid { stroke: #ddd; stroke-width: 1; }
.tick { font-size: 11px; fill: #444; }
#tip { position: absolute; display: none; background: #222; color: #fff; padding: 6px 8px;
       border-radius: 4px; font-size: 12px; pointer-events: none; white-space: pre; }
table { border-collapse: collapse; margin-top: 1em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; font-size: 13px; }
td.l, th.l { text-align: left; }
th { background: #f3f3f3; cursor: pointer; user-select: none; }
tr.hl td { background: #fdf2c4; }
"""

_HTML_SCRIPT = """
(function () {
  var rows = JSON.parse(document.getElementById('front-data').textContent);
  var tip = document.getElementById('tip');
  function pct(v) { return (v === null || v === undefined) ? 'n/a' : (100 * v).toFixed(2) + '%'; }
  function text(r) {
    return 'id: ' + r.id + '\\nsparsity: ' + r.sparsity_text + '\\ncertified: ' + pct(r.certified_accuracy) +
      '\\nclean: ' + pct(r.clean_accuracy) + '\\nactivations: ' + r.activations_text +
      '\\ngeneration: ' + (r.generation === null ? 'n/a' : r.generation);
  }
  function highlight(i, on) {
    var p = document.querySelector('.pt[data-i="' + i + '"]');
    var tr = document.querySelector('tr[data-i="' + i + '"]');
    if (p) p.classList.toggle('hl', on);
    if (tr) tr.classList.toggle('hl', on);
  }
  document.querySelectorAll('.pt').forEach(function (p) {
    var i = +p.getAttribute('data-i');
    p.addEventListener('mousemove', function (e) {
      tip.textContent = text(rows[i]); tip.style.display = 'block';
      tip.style.left = (e.pageX + 12) + 'px'; tip.style.top = (e.pageY + 12) + 'px';
      highlight(i, true);
    });
    p.addEventListener('mouseleave', function () { tip.style.display = 'none'; highlight(i, false); });
  });
  document.querySelectorAll('tbody tr').forEach(function (tr) {
    var i = +tr.getAttribute('data-i');
    tr.addEventListener('mouseenter', function () { highlight(i, true); });
    tr.addEventListener('mouseleave', function () { highlight(i, false); });
  });
  var body = document.querySelector('tbody');
  document.querySelectorAll('th').forEach(function (th, col) {
    var ascending = true;
    th.addEventListener('click', function () {
      var trs = Array.prototype.slice.call(body.querySelectorAll('tr'));
      trs.sort(function (a, b) {
        var x = a.children[col].getAttribute('data-v'), y = b.children[col].getAttribute('data-v');
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
        return ascending ? c : -c;
      });
      ascending = !ascending;
      trs.forEach(function (tr) { body.appendChild(tr); });
    });
  });
})();
"""


def _fmt_pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.2f}%"


def front_html(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "certevo Pareto front") -> Path:
    """A self-contained interactive page of the front: an SVG scatter (sparsity vs certified
    accuracy, with the front's staircase) whose points show id, sparsity, certified and
    clean accuracy, activations and generation on hover, and a table sortable by clicking
    a column header. ``rows`` are front.json's ``"front"`` entries."""
    data = []
    for r in rows:
        data.append({
            "id": str(r["id"]),
            "sparsity": None if r.get("sparsity") is None else float(r["sparsity"]),
            "sparsity_text": format_sparsity(r.get("sparsity")),
            "certified_accuracy": None if r.get("certified_accuracy") is None else float(r["certified_accuracy"]),
            "clean_accuracy": None if r.get("clean_accuracy") is None else float(r["clean_accuracy"]),
            "activations_text": activation_text(r.get("activations", "")),
            "generation": r.get("generation"),
        })
    width, height, left, right, top, bottom = 640, 400, 60, 20, 20, 45
    xs = [100 * d["sparsity"] for d in data if d["sparsity"] is not None]
    x_lo = max(0.0, math.floor((min(xs) - 2) / 5) * 5) if xs else 0.0
    x_hi = min(100.0, math.ceil((max(xs) + 2) / 5) * 5) if xs else 100.0
    if x_hi <= x_lo:
        x_lo, x_hi = 0.0, 100.0
    ys = [100 * d["certified_accuracy"] for d in data if d["certified_accuracy"] is not None]
    y_hi = min(100.0, max(10.0, math.ceil((max(ys) + 5) / 10) * 10)) if ys else 100.0

    def sx(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * (width - left - right)

    def sy(v: float) -> float:
        return height - bottom - v / y_hi * (height - top - bottom)

    svg = [f'<svg id="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="Pareto front">']
    for k in range(6):
        xv = x_lo + k * (x_hi - x_lo) / 5
        yv = k * y_hi / 5
        svg.append(f'<line class="grid" x1="{sx(xv):.1f}" y1="{top}" x2="{sx(xv):.1f}" y2="{height - bottom}"/>')
        svg.append(f'<line class="grid" x1="{left}" y1="{sy(yv):.1f}" x2="{width - right}" y2="{sy(yv):.1f}"/>')
        svg.append(f'<text class="tick" x="{sx(xv):.1f}" y="{height - bottom + 16}" text-anchor="middle">{xv:.0f}</text>')
        svg.append(f'<text class="tick" x="{left - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.0f}</text>')
    svg.append(f'<line class="axis" x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}"/>')
    svg.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}"/>')
    svg.append(f'<text class="tick" x="{(left + width - right) / 2:.0f}" y="{height - 8}" text-anchor="middle">'
               'sparsity (%)</text>')
    svg.append(f'<text class="tick" transform="translate(16 {(top + height - bottom) / 2:.0f}) rotate(-90)" '
               'text-anchor="middle">certified accuracy (%)</text>')
    pts = sorted((i for i, d in enumerate(data) if d["sparsity"] is not None and d["certified_accuracy"] is not None),
                 key=lambda i: (data[i]["sparsity"], -data[i]["certified_accuracy"]))
    if pts:
        path_d = []
        for k, i in enumerate(pts):
            x, y = sx(100 * data[i]["sparsity"]), sy(100 * data[i]["certified_accuracy"])
            if k == 0:
                path_d.append(f"M{x:.1f},{y:.1f}")
            else:  # staircase, as in plot_front: drop at the previous point, then run right
                prev_x = sx(100 * data[pts[k - 1]]["sparsity"])
                path_d.append(f"L{prev_x:.1f},{y:.1f} L{x:.1f},{y:.1f}")
        svg.append(f'<path d="{" ".join(path_d)}" fill="none" stroke="#c0392b" stroke-width="1.5" opacity="0.7"/>')
    for i in pts:
        svg.append(f'<circle class="pt" data-i="{i}" cx="{sx(100 * data[i]["sparsity"]):.1f}" '
                   f'cy="{sy(100 * data[i]["certified_accuracy"]):.1f}" r="6"/>')
    svg.append("</svg>")

    columns = [("id", "l"), ("sparsity", ""), ("certified acc.", ""), ("clean acc.", ""), ("activations", "l"),
               ("generation", "")]
    head = "".join(f'<th class="{cls}" title="click to sort">{html.escape(name)}</th>' for name, cls in columns)
    body = []
    for i, d in enumerate(data):
        cells = [
            (d["id"], d["id"], "l"),
            (format_sparsity(d["sparsity"]), d["sparsity"], ""),  # cut, never rounded up across a level
            (_fmt_pct(d["certified_accuracy"]), d["certified_accuracy"], ""),
            (_fmt_pct(d["clean_accuracy"]), d["clean_accuracy"], ""),
            (d["activations_text"], d["activations_text"], "l"),
            ("" if d["generation"] is None else str(d["generation"]), d["generation"], ""),
        ]
        tds = "".join(
            f'<td class="{cls}" data-v="{html.escape("" if value is None else str(value), quote=True)}">'
            f"{html.escape(shown)}</td>"
            for shown, value, cls in cells
        )
        body.append(f'<tr data-i="{i}">{tds}</tr>')
    # JSON inside <script>: escape <, > and & so no id can end or open an element
    payload = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_HTML_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p>{len(data)} candidates on the front. Hover a point for details; "
        "click a column header to sort.</p>\n"
        + "\n".join(svg)
        + f"\n<div id=\"tip\"></div>\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table>\n"
        f"<script type=\"application/json\" id=\"front-data\">{payload}</script>\n"
        f"<script>{_HTML_SCRIPT}</script>\n</body>\n</html>\n"
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
