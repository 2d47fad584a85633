"""certevo.search.plots: every picture is a valid PNG, the HTML page is self-contained."""

from __future__ import annotations

import re

import matplotlib.image
import numpy as np
import pytest
from matplotlib.collections import LineCollection, PathCollection

from certevo.population.lineage import Lineage, LineageRecord
from certevo.search import lineage_plot, plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes: int = 5_000) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(image[..., :3].std()) > 0.01  # something was drawn, not a blank canvas
    return image


HISTORY = [
    {"generation": 0, "hypervolume": 0.10, "front_size": 2, "front": [["a", 0.5, 0.20], ["b", 0.9, 0.10]]},
    {"generation": 1, "hypervolume": 0.14, "front_size": 3,
     "front": [["a", 0.5, 0.20], ["c", 0.8, 0.18], ["b", 0.9, 0.10]]},
    {"generation": 2, "hypervolume": 0.17, "front_size": 3,
     "front": [["d", 0.6, 0.25], ["c", 0.8, 0.18], ["e", 0.95, 0.12]]},
]

ROWS = [
    {"id": "d1a2b3c4d5e6f7a8b9c0", "sparsity": 0.6, "certified_accuracy": 0.25, "clean_accuracy": 0.4,
     "activations": ["relu", "tanh"], "generation": 2},
    {"id": "c0ffee00112233445566", "sparsity": 0.8, "certified_accuracy": 0.18, "clean_accuracy": 0.3,
     "activations": ["relu", ["relu", "tanh", "tanh"]], "generation": 1},
    {"id": "e<script>alert(1)</script>", "sparsity": 0.95, "certified_accuracy": 0.12, "clean_accuracy": 0.2,
     "activations": ["sigmoid", "relu"], "generation": None},
]


def test_plot_front_writes_a_png(tmp_path):
    out = plots.plot_front(HISTORY[-1]["front"], tmp_path / "f" / "front.png")
    assert out == tmp_path / "f" / "front.png"
    assert_png(out)


def test_plot_front_with_history_and_other_point_forms(tmp_path):
    with_history = assert_png(plots.plot_front(HISTORY[-1]["front"], tmp_path / "h.png", history=HISTORY[:-1]))
    pairs = assert_png(plots.plot_front([(0.5, 0.2), (0.9, 0.1)], tmp_path / "pairs.png"))
    rows = assert_png(plots.plot_front(ROWS, tmp_path / "rows.png", title="front.json rows"))
    assert with_history.shape[1] >= pairs.shape[1] and rows.size


def test_plot_front_of_an_empty_front_still_writes_an_image(tmp_path):
    assert_png(plots.plot_front([], tmp_path / "empty.png"), min_bytes=2_000)


def test_plot_history(tmp_path):
    assert_png(plots.plot_history(HISTORY, tmp_path / "history.png"))


def test_front_html_is_self_contained_and_lists_every_row(tmp_path):
    out = plots.front_html(ROWS, tmp_path / "front.html")
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>")
    for row in ROWS[:2]:
        assert row["id"] in text
    # the hostile id is shown escaped, never as live markup
    assert "e&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script>alert(1)" not in text
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(//|[a-z]+:)""", text, re.I)
    assert text.count('class="pt"') == len(ROWS)
    assert text.count("<tr data-i=") == len(ROWS)
    assert "relu/tanh" not in text and "relu×1/tanh×2" in text  # per-neuron layer summarised


def lineage_fixture() -> tuple[Lineage, list[str]]:
    records = [
        LineageRecord("k1", (), "kstart", 0, (0.5, 0.2)),
        LineageRecord("k2", (), "kstart", 0, (0.9, 0.1)),
        LineageRecord("k3", (), "kstart", 0, (0.5, 0.05)),  # not an ancestor of the front
        LineageRecord("c1", ("k1", "k2"), "crossover_uniform", 1, (0.7, 0.18)),
        LineageRecord("m1", ("k2",), "prune_regrow", 1, (0.92, 0.12)),
        LineageRecord("c2", ("c1", "m1"), "crossover_uniform", 2, (0.8, 0.2)),
        LineageRecord("d3", ("c2",), "density", 3, (0.85, 0.19)),
        LineageRecord("x4", ("orphan-parent",), "activation", 3, None),  # parent never recorded
    ]
    return Lineage(records), ["k1", "d3", "m1", "x4"]


def test_plot_lineage(tmp_path):
    lineage, front = lineage_fixture()
    assert_png(plots.plot_lineage(lineage, front, tmp_path / "lineage.png"))


def test_plot_lineage_places_nodes_at_their_generation_and_sparsity():
    lineage, front = lineage_fixture()
    generation, edges = lineage_plot.lineage_nodes(lineage, front)
    assert "k3" not in generation  # only the ancestry of the front is drawn
    assert generation["orphan-parent"] == 2 and generation["d3"] == 3
    assert ("c1", "c2", "crossover_uniform") in edges
    ax = lineage_plot.lineage_figure(lineage, front).axes[0]
    points = np.concatenate([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    # y is the sparsity in %, x the generation (spread by less than half a generation)
    scored = {r.candidate_id: r for r in lineage if r.candidate_id in generation and r.objectives is not None}
    assert len(points) == len(scored)  # x4 and its unrecorded parent have no score: not drawn
    for cid, record in scored.items():
        assert any(abs(y - 100 * record.objectives[0]) < 1e-9 and abs(x - record.generation) < 0.4
                   for x, y in points), cid
    assert len({(round(x, 6), round(y, 6)) for x, y in points}) == len(points)  # no two nodes on top of each other
    assert "2 without a score not drawn" in ax.get_title()


def test_plot_lineage_of_a_large_ancestry_stays_readable_size(tmp_path):
    records = [LineageRecord(f"g0-{i}", (), "kstart", 0, (0.5, 0.1)) for i in range(10)]
    for gen in range(1, 40):
        for i in range(10):
            parents = (f"g{gen - 1}-{i}", f"g{gen - 1}-{(i + 3) % 10}")
            records.append(LineageRecord(f"g{gen}-{i}", parents, "crossover_uniform" if i % 2 else "prune_regrow",
                                         gen, (0.5 + gen / 100, 0.1)))
    lineage = Lineage(records)
    image = assert_png(plots.plot_lineage(lineage, [f"g39-{i}" for i in range(10)], tmp_path / "big.png"))
    assert image.shape[1] <= 30 * plots.DPI + 1 and image.shape[0] <= 20 * plots.DPI + 1


def fifty_generations() -> tuple[Lineage, list[str]]:
    """A real lineage of 50 generations of 12 children each (one parent per child, drawn from
    the previous generation), with sparsity and certified accuracy drifting as in a search."""
    rng = np.random.default_rng(7)
    records, previous = [], []
    for i in range(8):
        record = LineageRecord(f"seed{i:02d}", (), "kstart", 0, (0.5 + 0.05 * i, float(rng.uniform(0.1, 0.4))))
        records.append(record)
        previous.append(record)
    for gen in range(1, 50):
        current = []
        for i in range(12):
            parent = previous[int(rng.integers(len(previous)))]
            s = float(np.clip(parent.objectives[0] + rng.normal(0.004, 0.02), 0.3, 0.99))
            c = float(np.clip(parent.objectives[1] - 1.5 * (s - parent.objectives[0]) + rng.normal(0.003, 0.02), 0, 1))
            op = ("sparsify_proportional", "reallocate", "regrow")[i % 3] + ("+activation" if i % 4 == 0 else "")
            current.append(LineageRecord(f"g{gen:02d}c{i:02d}", (parent.candidate_id,), op, gen, (s, c)))
        records.extend(current)
        previous = sorted(previous + current, key=lambda r: -(r.objectives[1] + 0.5 * r.objectives[0]))[:12]
    objectives = {r.candidate_id: r.objectives for r in records}
    front = [a for a, (sa, ca) in objectives.items()
             if not any(sb >= sa and cb >= ca and (sb, cb) != (sa, ca) for sb, cb in objectives.values())]
    return Lineage(records), front


def test_lineage_of_50_generations_has_meaningful_axes_and_stays_legible(tmp_path):
    lineage, front = fifty_generations()
    assert len(front) >= 5
    fig = lineage_plot.lineage_figure(lineage, front)
    ax, bar = fig.axes[0], fig.axes[1]
    drawn = {cid: lineage.get(cid) for cid in [*front, *{a for f in front for a in lineage.ancestors(f)}]}
    assert ax.get_xlabel() == "generation" and ax.get_ylabel() == "sparsity (%)"
    gens = [r.generation for r in drawn.values()]
    sparsity = [100 * r.objectives[0] for r in drawn.values()]
    lo, hi = ax.get_xlim()
    assert min(gens) - 1 <= lo <= min(gens) - 0.4 and max(gens) + 0.4 <= hi <= max(gens) + 1
    bottom, top = ax.get_ylim()
    assert 0 <= bottom <= min(sparsity) and max(sparsity) <= top <= 100
    # colour = certified accuracy, with its colourbar
    assert bar.get_ylabel() == "certified accuracy (%)"
    assert bar.get_ylim()[1] == pytest.approx(max(100 * r.objectives[1] for r in drawn.values()))
    # legible at 50 generations: bounded size, ~15 generation ticks, only front members named
    width, height = fig.get_size_inches()
    assert width <= 14 and height <= 6
    assert len([t for t in ax.get_xticks() if lo <= t <= hi]) <= 16
    labels = [t.get_text() for t in ax.texts]
    assert 0 < len(labels) <= lineage_plot.MAX_LABELS
    assert all(any(cid.startswith(label) for cid in front) for label in labels)
    # parent -> child edges: every one drawn, thin and faint
    (edges,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(edges.get_segments()) == sum(len(r.parent_ids) for r in drawn.values())
    assert max(edges.get_linewidths()) <= 1.0 and edges.get_alpha() <= 0.5
    image = assert_png(plots.plot_lineage(lineage, front, tmp_path / "lineage.png"))
    assert image.shape[1] <= 14 * plots.DPI + 1 and image.shape[0] <= 6 * plots.DPI + 1


def test_history_figure_shows_hypervolume_best_certified_and_front_size():
    history = [dict(h, best_certified={"0.5": 0.1 + 0.05 * i, "0.9": 0.05 * i}) for i, h in enumerate(HISTORY)]
    fig = plots.history_figure(history)
    top, middle, bottom = fig.axes[:3]
    assert (top.get_ylabel(), middle.get_ylabel(), bottom.get_ylabel()) == (
        "hypervolume", "best certified (%)", "front size")
    assert bottom.get_xlabel() == "generation"
    lines = {line.get_label(): list(line.get_ydata()) for line in middle.get_lines()}
    assert lines == {"sparsity >= 50%": pytest.approx([10, 15, 20]), "sparsity >= 90%": pytest.approx([0, 5, 10])}


@pytest.mark.parametrize("pattern,text", [
    (["relu", "tanh"], "relu,tanh"),
    ([["relu", "relu", "tanh"], "sigmoid"], "relu×2/tanh×1,sigmoid"),
    ("relu", "relu"),
])
def test_activation_text(pattern, text):
    assert plots.activation_text(pattern) == text
