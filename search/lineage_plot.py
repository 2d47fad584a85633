"""The lineage picture (``lineage.png``): the ancestry of the final front, candidate by
candidate, with axes that mean something.

x = the generation a candidate was made in (spread a little within the generation, so the
candidates of one generation do not sit on one vertical line), y = its sparsity (%),
colour = its certified accuracy (a colourbar), faint thin lines from parent to child,
front members as red-rimmed stars and the only ones labelled. The figure's size is
bounded, so 50 generations stay as legible as 5.

Drawn on ``matplotlib.figure.Figure`` objects (no pyplot), as everything in certevo.search.plots.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

__all__ = ["lineage_figure", "lineage_nodes"]

FRONT_COLOR = "#c0392b"
UNKNOWN_COLOR = "#bbbbbb"
#: Half the width of the band a generation's candidates are spread over on the x axis.
JITTER = 0.35
#: At most this many front members get their id written next to them.
MAX_LABELS = 25
MAX_WIDTH, MAX_HEIGHT = 14.0, 6.0
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def lineage_nodes(lineage: Any, ids: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str, str]]]:
    """Generation of every node (the ids and their ancestors) and the parent->child edges
    (parent, child, operator of the child). A parent the lineage does not record is put
    one generation before its earliest child."""
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
    for node in nodes:
        if node not in generation:
            children = [generation[c] for p, c, _ in edges if p == node and c in generation]
            generation[node] = (min(children) - 1) if children else 0
    return generation, edges


def _scores(lineage: Any, node: str) -> tuple[float | None, float | None]:
    """(sparsity, certified accuracy) of a node, None where unknown; a failed evaluation
    (objectives -1) has a sparsity (its fitness record's) but no certified accuracy."""
    if node not in lineage:
        return None, None
    record = lineage.get(node)
    objectives = record.objectives or ()
    fitness = record.fitness or {}
    sparsity = objectives[0] if len(objectives) >= 1 and objectives[0] >= 0 else fitness.get("sparsity")
    certified = objectives[1] if len(objectives) >= 2 and objectives[1] >= 0 else None
    return (None if sparsity is None else float(sparsity)), certified


def _jitter(node: str) -> float:
    """A fixed offset in [-JITTER, JITTER] from the id (the same picture every time)."""
    h = int.from_bytes(hashlib.blake2b(node.encode(), digest_size=4).digest(), "big")
    return (h / 2**32 * 2 - 1) * JITTER


def _labelled(pos: dict[str, tuple[float, float]], front: set[str], width: float) -> list[str]:
    """The front members to label, by sparsity: one whose label would overlap a label
    already placed is skipped; at most MAX_LABELS. ``width``: the figure's, in inches."""
    xs, ys = [x for x, _ in pos.values()] or [0.0], [y for _, y in pos.values()] or [0.0]
    # a label is ~36 pt wide and ~9 pt high; the axes take ~(width - 2.5) x (MAX_HEIGHT - 1.8) inches
    near_x = 36 * (max(xs) - min(xs) + 1.2) / (72 * (width - 2.5))
    near_y = 9 * max(1e-9, max(ys) - min(ys)) / (72 * (MAX_HEIGHT - 1.8))
    out: list[str] = []
    for node in sorted((n for n in pos if n in front), key=lambda n: (pos[n][1], n)):
        x, y = pos[node]
        if all(abs(x - pos[o][0]) > near_x or abs(y - pos[o][1]) > near_y for o in out):
            out.append(node)
    return out[:MAX_LABELS]


def lineage_figure(lineage: Any, ids: Sequence[str], *, title: str = "ancestry of the final front") -> Figure:
    """The ancestry graph of ``ids`` (normally the final front) as a Figure; see the module
    docstring for what each axis and mark means. ``lineage`` is a
    :class:`certevo.population.lineage.Lineage`."""
    ids = list(dict.fromkeys(ids))
    generation, edges = lineage_nodes(lineage, ids)
    scores = {node: _scores(lineage, node) for node in generation}
    # a parent the lineage does not record sits at the mean sparsity of its children; a
    # node whose sparsity nothing tells (unscored, no scored child) is left out
    for node, (sparsity, _) in list(scores.items()):
        if sparsity is None:
            known = [scores[c][0] for p, c, _ in edges if p == node and scores[c][0] is not None]
            scores[node] = (sum(known) / len(known) if known else None, None)
    pos = {node: (generation[node] + _jitter(node), 100 * sparsity)
           for node, (sparsity, _) in scores.items() if sparsity is not None}
    unplaced = len(generation) - len(pos)
    gens = sorted({generation[n] for n in pos}) or [0]
    width = min(MAX_WIDTH, max(7.0, 4.5 + 0.2 * (gens[-1] - gens[0] + 1)))
    fig = Figure(figsize=(width, MAX_HEIGHT), layout="constrained")
    ax = fig.add_subplot()

    edges = [(p, c, op.split("+")[0]) for p, c, op in edges if p in pos and c in pos]  # "a+b" coloured as a
    operators = sorted({op for _, _, op in edges})
    op_color = {op: PALETTE[i % len(PALETTE)] for i, op in enumerate(operators)}
    drawn = [(pos[p], pos[c], op_color[op]) for p, c, op in edges]
    if drawn:
        ax.add_collection(LineCollection([[a, b] for a, b, _ in drawn], colors=[col for _, _, col in drawn],
                                         linewidths=0.6, alpha=0.3, zorder=1))

    certs = [100 * c for _, c in scores.values() if c is not None]
    mappable = ScalarMappable(norm=Normalize(vmin=0.0, vmax=max(certs + [1e-6])), cmap="viridis")
    front = set(ids) & set(pos)
    size = max(8.0, min(40.0, 4000.0 / max(1, len(pos))))
    for members, style in (
        ([n for n in pos if n not in front], dict(s=size, marker="o", edgecolors="black", linewidths=0.3, zorder=2)),
        ([n for n in pos if n in front], dict(s=4 * size + 40, marker="*", edgecolors=FRONT_COLOR, linewidths=1.2,
                                              zorder=4)),
    ):
        if members:
            faces = [mappable.to_rgba(100 * scores[n][1]) if scores[n][1] is not None else UNKNOWN_COLOR
                     for n in members]
            ax.scatter([pos[n][0] for n in members], [pos[n][1] for n in members], color=faces, **style)
    for node in _labelled(pos, front, width):
        ax.annotate(node[:6], pos[node], xytext=(5, 4), textcoords="offset points", fontsize=7, fontweight="bold",
                    zorder=5)

    handles = [Line2D([0], [0], color=op_color[op], linewidth=2, label=op) for op in operators]
    handles.append(Line2D([0], [0], marker="*", linestyle="", markersize=11, markerfacecolor="white",
                          markeredgecolor=FRONT_COLOR, label="front member"))
    fig.legend(handles=handles, title="parent -> child line: first operator that made the child",
               loc="outside lower center", fontsize=8, ncols=min(len(handles), 4), frameon=False)
    fig.colorbar(mappable, ax=ax, label="certified accuracy (%)")
    ax.set_xlabel("generation")
    ax.set_ylabel("sparsity (%)")
    if gens[-1] - gens[0] < 15:
        ax.set_xticks(range(gens[0], gens[-1] + 1))
    else:  # at most ~15 generation labels, however long the search
        ax.xaxis.set_major_locator(MaxNLocator(nbins=15, integer=True))
    ax.set_xlim(gens[0] - 0.6, gens[-1] + 0.6)
    ys = [y for _, y in pos.values()] or [50.0]
    pad = max(1.0, 0.05 * (max(ys) - min(ys)))
    ax.set_ylim(max(0.0, min(ys) - pad), min(100.0, max(ys) + pad))
    ax.grid(True, axis="y", alpha=0.25)
    unscored = f"; {unplaced} without a score not drawn" if unplaced else ""
    ax.set_title(f"{title}\n{len(front)} front members, {len(pos)} candidates{unscored}", fontsize=10)
    return fig
