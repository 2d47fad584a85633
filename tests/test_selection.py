"""Tests of certevo.population.selection on hand-made fronts, plus a few properties."""

from __future__ import annotations

import copy
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certevo.population.errors import ConfigError
from certevo.population.selection import (
    IncrementalFront,
    Individual,
    MaximiseFitness,
    hypervolume,
    hypervolume_2d,
    nondominated_ranks,
    pareto_front,
    select_nsga2,
)

POINTS = [(0.5, 0.5), (0.9, 0.2), (0.2, 0.9), (0.4, 0.4)]
NAMES = ["mid", "sparse", "accurate", "dominated"]

unit = st.floats(0.0, 1.0, allow_nan=False)
point_lists = st.lists(st.tuples(unit, unit), min_size=1, max_size=25)


def dominates(p, q):
    return all(x >= y for x, y in zip(p, q)) and any(x > y for x, y in zip(p, q))


def test_front_excludes_dominated_point():
    assert pareto_front(NAMES, POINTS) == ["mid", "sparse", "accurate"]
    assert nondominated_ranks(POINTS) == [0, 0, 0, 1]


def test_ranks_of_a_chain_and_ties():
    assert nondominated_ranks([(0.1, 0.1), (0.3, 0.3), (0.2, 0.2), (0.3, 0.3)]) == [2, 0, 1, 0]
    assert nondominated_ranks([]) == []
    assert pareto_front(["a", "b"], [(0.3, 0.3), (0.3, 0.3)]) == ["a", "b"]


def test_select_nsga2_keeps_front_when_k_covers_it():
    chosen = select_nsga2(NAMES, POINTS, 3)
    assert sorted(chosen) == sorted(["mid", "sparse", "accurate"])
    assert sorted(select_nsga2(NAMES, POINTS, 4)) == sorted(NAMES)
    # Cutting the front keeps the extremes (infinite crowding distance).
    assert sorted(select_nsga2(NAMES, POINTS, 2)) == ["accurate", "sparse"]
    assert select_nsga2(NAMES, POINTS, 0) == []


def test_select_nsga2_is_deterministic():
    items = list(range(30))
    objectives = [((i * 7) % 11 / 10, (i * 5) % 13 / 12) for i in items]
    assert select_nsga2(items, objectives, 12) == select_nsga2(items, objectives, 12)


@settings(max_examples=80, deadline=None)
@given(point_lists, st.data())
def test_select_nsga2_properties(points, data):
    k = data.draw(st.integers(0, len(points)))
    items = list(range(len(points)))
    chosen = select_nsga2(items, points, k)
    assert len(chosen) == k == len(set(chosen))
    front = pareto_front(items, points)
    ranks = nondominated_ranks(points)
    assert [i for i in items if ranks[i] == 0] == front
    assert all(not any(dominates(points[j], points[i]) for j in items) for i in front)
    if k >= len(front):
        assert set(front) <= set(chosen)
    # No chosen item is outranked by an unchosen one.
    if chosen and len(chosen) < len(items):
        assert max(ranks[i] for i in chosen) <= min(ranks[i] for i in items if i not in chosen)


def test_bad_input_is_rejected_with_the_fix():
    with pytest.raises(ConfigError, match="one objectives tuple per item"):
        select_nsga2(["a"], [(1.0, 1.0), (0.0, 0.0)], 1)
    with pytest.raises(ConfigError, match="k must be"):
        select_nsga2(["a"], [(1.0, 1.0)], 2)
    with pytest.raises(ConfigError, match="NaN"):
        pareto_front(["a"], [(float("nan"), 1.0)])
    with pytest.raises(ConfigError, match="same objectives"):
        nondominated_ranks([(1.0, 1.0), (1.0,)])


def test_individuals_pickle_and_copy():
    ind = Individual("genome-id", 3, (0.5, 0.25))
    ind.fitness.crowding_dist = 1.5
    for clone in (pickle.loads(pickle.dumps(ind)), copy.deepcopy(ind)):
        assert clone.item == "genome-id" and clone.index == 3
        assert clone.fitness.values == (0.5, 0.25)
        assert clone.fitness.crowding_dist == 1.5
        assert isinstance(clone.fitness, MaximiseFitness)
    assert MaximiseFitness((1.0, 2.0, 3.0)).dominates(MaximiseFitness((1.0, 2.0, 2.0)))


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([(0.5, 0.5)], 0.25),
        ([(1.0, 0.0), (0.0, 1.0)], 0.0),
        ([(0.5, 1.0), (1.0, 0.5)], 0.75),
        ([(0.5, 0.5), (0.4, 0.4), (0.5, 0.5)], 0.25),
        ([], 0.0),
        ([(1.0, 1.0)], 1.0),
        (POINTS, 0.5 * 0.5 + (0.9 - 0.5) * 0.2 + 0.2 * (0.9 - 0.5)),
    ],
)
def test_hypervolume_2d_hand_made(points, expected):
    assert hypervolume_2d(points) == pytest.approx(expected)
    assert hypervolume(points, (0.0, 0.0)) == pytest.approx(expected)


def test_hypervolume_other_reference_and_dimensions():
    assert hypervolume_2d([(0.5, 0.5)], reference=(0.25, 0.0)) == pytest.approx(0.125)
    assert hypervolume([(0.5, 1.0, 1.0), (1.0, 0.5, 1.0)], (0.0, 0.0, 0.0)) == pytest.approx(0.75)
    assert hypervolume([(0.5, 0.5, 0.5)], (0.0, 0.0, 0.0)) == pytest.approx(0.125)
    assert hypervolume([(0.5, 0.5, -0.1)], (0.0, 0.0, 0.0)) == 0.0
    with pytest.raises(ConfigError, match="reference"):
        hypervolume([(0.5, 0.5)], (0.0, 0.0, 0.0))


@settings(max_examples=80, deadline=None)
@given(point_lists, st.tuples(unit, unit))
def test_hypervolume_2d_monotone_and_bounded(points, extra):
    base = hypervolume_2d(points)
    assert 0.0 <= base <= 1.0 + 1e-12
    assert hypervolume_2d(points + [extra]) >= base - 1e-12
    front = pareto_front(points, points)
    assert hypervolume_2d(front) == pytest.approx(base)


# Few distinct values, so that ties, duplicates and points equal in one objective are common.
coarse = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.tuples(coarse, coarse), st.tuples(unit, unit)), max_size=40))
def test_the_incremental_front_equals_the_front_of_everything_added_after_every_step(rows):
    """The search keeps its archive's front this way (None: a failed candidate, never on it)."""
    front = IncrementalFront()
    for k, row in enumerate(rows):
        front.add(k, row)
        offered = [i for i in range(k + 1) if rows[i] is not None]
        assert front.items() == pareto_front(offered, [rows[i] for i in offered])
        assert front.seen == k + 1


def test_the_incremental_front_refuses_objectives_pareto_front_refuses():
    front = IncrementalFront()
    front.add("a", (0.5, 0.5))
    with pytest.raises(ConfigError, match="finite"):
        front.add("b", (float("nan"), 0.5))
    with pytest.raises(ConfigError, match="same objectives"):
        front.add("c", (0.5, 0.5, 0.5))
