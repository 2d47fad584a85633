"""search.plots: every picture is a valid PNG, the HTML page is self-contained."""

from __future__ import annotations

import re
import sys

import matplotlib.image
import numpy as np
import pytest

from population.lineage import Lineage, LineageRecord
from search import plots

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


def test_plot_lineage_layout_puts_nodes_at_their_generation(monkeypatch):
    lineage, front = lineage_fixture()
    generation, edges = plots._lineage_nodes(lineage, front)
    assert "k3" not in generation  # only the ancestry of the front is drawn
    assert generation["orphan-parent"] == 2 and generation["d3"] == 3
    assert ("c1", "c2", "crossover_uniform") in edges
    with_nx = plots._layout(generation, edges)
    monkeypatch.setitem(sys.modules, "networkx", None)  # import fails: the own layout is used
    without_nx = plots._layout(generation, edges)
    for pos in (with_nx, without_nx):
        assert set(pos) == set(generation)
        assert all(pos[n][0] == generation[n] for n in pos)
        for gen in set(generation.values()):  # no two nodes of a generation on top of each other
            ys = [pos[n][1] for n in pos if generation[n] == gen]
            assert len(set(ys)) == len(ys)


def test_plot_lineage_without_networkx(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "networkx", None)
    lineage, front = lineage_fixture()
    assert_png(plots.plot_lineage(lineage, front, tmp_path / "lineage.png"))


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


@pytest.mark.parametrize("pattern,text", [
    (["relu", "tanh"], "relu,tanh"),
    ([["relu", "relu", "tanh"], "sigmoid"], "relu×2/tanh×1,sigmoid"),
    ("relu", "relu"),
])
def test_activation_text(pattern, text):
    assert plots.activation_text(pattern) == text
