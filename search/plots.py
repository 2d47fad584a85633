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
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

__all__ = ["activation_text", "front_html", "plot_front", "plot_history", "plot_lineage"]

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
    fig.savefig(out, dpi=DPI, format="png")
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


def plot_history(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Hypervolume (top) and front size (bottom) per generation."""
    gens = [int(h.get("generation", i)) for i, h in enumerate(history)]
    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(gens, [float(h["hypervolume"]) for h in history], marker="o", color="#1f77b4")
    top.set_ylabel("hypervolume")
    top.set_title("search progress")
    top.grid(True, alpha=0.3)
    bottom.bar(gens, [int(h["front_size"]) for h in history], color="#7f8c8d")
    bottom.set_ylabel("front size")
    bottom.set_xlabel("generation")
    bottom.grid(True, axis="y", alpha=0.3)
    if gens:
        bottom.set_xticks(gens if len(gens) <= 25 else gens[:: math.ceil(len(gens) / 25)])
    else:
        top.text(0.5, 0.5, "no generation yet", transform=top.transAxes, ha="center", va="center")
    return _save(fig, path)


# -- lineage ------------------------------------------------------------------------------
def _lineage_nodes(lineage: Any, ids: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str, str]]]:
    """Generation of every node (the ids and their ancestors) and the parent->child edges
    (parent, child, operator of the child)."""
    nodes: list[str] = []
    for cid in ids:
        if cid not in nodes:
            nodes.append(cid)
        if cid in lineage:
            nodes.extend(a for a in lineage.ancestors(cid) if a not in nodes)
    generation: dict[str, int] = {}
    edges: list[tuple[str, str, str]] = []
    for node in nodes:
        if node in lineage:
            record = lineage.get(node)
            generation[node] = int(record.generation)
            for parent in dict.fromkeys(record.parent_ids):
                edges.append((parent, node, record.operator))
    # parents the lineage does not record: one generation before their earliest child
    for node in nodes:
        if node not in generation:
            children = [generation[c] for p, c, _ in edges if p == node and c in generation]
            generation[node] = (min(children) - 1) if children else 0
    return generation, edges


def _layer_order(generation: dict[str, int], edges: list[tuple[str, str, str]]) -> dict[int, list[str]]:
    """Nodes of each generation ordered by the barycentre of their parents' positions (a
    sweep of the Sugiyama heuristic), which keeps edge crossings low."""
    parents: dict[str, list[str]] = {}
    for p, c, _ in edges:
        parents.setdefault(c, []).append(p)
    layers: dict[int, list[str]] = {}
    for node, gen in generation.items():
        layers.setdefault(gen, []).append(node)
    position: dict[str, float] = {}
    ordered: dict[int, list[str]] = {}
    for gen in sorted(layers):
        members = layers[gen]

        def key(node: str, members: list[str] = members) -> tuple[float, int]:
            known = [position[p] for p in parents.get(node, ()) if p in position]
            return (sum(known) / len(known) if known else float(members.index(node)), members.index(node))

        members = sorted(members, key=key)
        for i, node in enumerate(members):
            position[node] = i - (len(members) - 1) / 2
        ordered[gen] = members
    return ordered


def _layout(generation: dict[str, int], edges: list[tuple[str, str, str]]) -> dict[str, tuple[float, float]]:
    """x = generation, y = spread within the generation. With networkx installed the
    within-layer coordinates come from ``multipartite_layout`` (nodes inserted in the
    barycentric order); without it from the order itself."""
    ordered = _layer_order(generation, edges)
    try:
        import networkx as nx
    except ImportError:  # pragma: no cover - networkx is a torch dependency, normally present
        nx = None
    if nx is not None and generation:
        graph = nx.DiGraph()
        for gen in sorted(ordered):
            for node in ordered[gen]:
                graph.add_node(node, layer=gen)
        graph.add_edges_from((p, c) for p, c, _ in edges)
        widest = max(len(m) for m in ordered.values())
        raw = nx.multipartite_layout(graph, subset_key="layer", align="vertical")
        # networkx scales x and y together; keep x = generation and give y a spacing of 1
        # in the widest generation (insertion order runs top to bottom)
        top = max(abs(float(raw[node][1])) for node in graph.nodes) or 1.0
        half = (widest - 1) / 2
        return {node: (float(generation[node]), -float(raw[node][1]) / top * half) for node in graph.nodes}
    return {node: (float(gen), float(i - (len(members) - 1) / 2))
            for gen, members in ordered.items() for i, node in enumerate(members)}


def plot_lineage(lineage: Any, ids: Sequence[str], path: str | Path, *,
                 title: str = "ancestry of the final front") -> Path:
    """The ancestry graph of ``ids`` (normally the final front): every ancestor is a node,
    placed by generation (x axis); edges go parent -> child, coloured by the operator that
    made the child; front members are drawn as large red-rimmed stars; node colour is the
    candidate's certified accuracy when the lineage knows it.

    ``lineage`` is a :class:`population.lineage.Lineage`.
    """
    ids = list(dict.fromkeys(ids))
    generation, edges = _lineage_nodes(lineage, ids)
    pos = _layout(generation, edges)
    gens = sorted(set(generation.values())) or [0]
    widest = max((sum(1 for g in generation.values() if g == gen) for gen in gens), default=1)
    width = min(30.0, max(7.0, 1.3 * (gens[-1] - gens[0] + 1) + 3))
    height = min(20.0, max(4.5, 0.32 * widest + 2))
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    # Colour by the first operator of a combined one ("crossover_uniform+density" ->
    # crossover_uniform), so the legend stays short.
    edges = [(p, c, op.split("+")[0]) for p, c, op in edges]
    operators = sorted({op for _, _, op in edges})
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#d62728"]
    op_color = {op: palette[i % len(palette)] for i, op in enumerate(operators)}
    # Edges run left to right (parent generation < child generation): one LineCollection
    # draws them all, far faster than an arrow patch each.
    drawn = [(pos[p], pos[c], op_color[op]) for p, c, op in edges if p in pos and c in pos]
    if drawn:
        ax.add_collection(LineCollection([[a, b] for a, b, _ in drawn], colors=[col for _, _, col in drawn],
                                         linewidths=1.0, alpha=0.75, zorder=2))

    def certified(node: str) -> float | None:
        if node in lineage:
            objectives = lineage.get(node).objectives
            if objectives is not None and len(objectives) >= 2 and objectives[1] >= 0:
                return float(objectives[1])
        return None

    norm = Normalize(vmin=0.0, vmax=max([certified(n) or 0.0 for n in pos] + [1e-6]))
    mappable = ScalarMappable(norm=norm, cmap="viridis")
    front = set(ids)
    # One scatter per marker kind: a call per node costs seconds on large lineages.
    for members, style in (
        ([n for n in pos if n in front], dict(s=190, marker="*", edgecolors=FRONT_COLOR, linewidths=1.6, zorder=4)),
        ([n for n in pos if n not in front], dict(s=55, marker="o", edgecolors="black", linewidths=0.5, zorder=3)),
    ):
        if members:
            faces = [mappable.to_rgba(certified(n)) if certified(n) is not None else "#dddddd" for n in members]
            ax.scatter([pos[n][0] for n in members], [pos[n][1] for n in members], color=faces, **style)
    if len(pos) <= 60:
        for node, (x, y) in pos.items():
            ax.annotate(node[:6], (x, y), xytext=(4, 5), textcoords="offset points", fontsize=7,
                        fontweight="bold" if node in front else "normal")
    handles = [Line2D([0], [0], color=op_color[op], linewidth=2, label=op) for op in operators]
    handles.append(Line2D([0], [0], marker="*", linestyle="", markersize=12, markerfacecolor="white",
                          markeredgecolor=FRONT_COLOR, label="front member"))
    fig.legend(handles=handles, title="first operator that made the child", loc="outside lower center", fontsize=8,
               ncols=min(len(handles), 6), frameon=False)
    fig.colorbar(mappable, ax=ax, label="certified accuracy")
    ax.set_xlabel("generation")
    ax.set_xticks(list(range(gens[0], gens[-1] + 1)) if gens[-1] - gens[0] <= 30 else gens)
    ax.set_yticks([])
    ys = [y for _, y in pos.values()] or [0.0]
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    ax.set_xlim(gens[0] - 0.6, gens[-1] + 0.6)
    ax.set_title(f"{title} ({len(front)} front members, {len(pos)} candidates)")
    return _save(fig, path)


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
    return 'id: ' + r.id + '\\nsparsity: ' + pct(r.sparsity) + '\\ncertified: ' + pct(r.certified_accuracy) +
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
            (_fmt_pct(d["sparsity"]), d["sparsity"], ""),
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
