"""Tests of certevo.population.lineage on a hand-built family tree.

    s1   s2          (seeds, generation 0)
    |  \\  |
    m1   x1          m1 = prune_regrow(s1); x1 = crossover_uniform(s1, s2)
     \\  /  \\
      x2    m2       x2 = crossover_layerwise(m1, x1); m2 = mutate_density(x1)
"""

from __future__ import annotations

import json
import math
from dataclasses import FrozenInstanceError

import pytest

from certevo.population.errors import CheckpointError, ConfigError
from certevo.population.lineage import Lineage, LineageRecord


def tree() -> Lineage:
    lineage = Lineage()
    lineage.add(LineageRecord("s1", (), "seed", 0, (0.5, 0.6), {"certified_accuracy": 0.6, "status": "ok"}))
    lineage.add(LineageRecord("s2", (), "seed", 0, (0.7, 0.4)))
    lineage.add(LineageRecord("m1", ("s1",), "prune_regrow", 1, (0.55, 0.6)))
    lineage.add(LineageRecord("x1", ("s1", "s2"), "crossover_uniform", 1, (0.6, 0.5)))
    lineage.add(LineageRecord("x2", ("m1", "x1"), "crossover_layerwise", 2))
    lineage.add(LineageRecord("m2", ("x1",), "mutate_density", 2, (0.9, 0.3)))
    return lineage


def test_ancestors_nearest_first():
    lineage = tree()
    assert lineage.ancestors("x2") == ["m1", "x1", "s1", "s2"]
    assert lineage.ancestors("m2") == ["x1", "s1", "s2"]
    assert lineage.ancestors("s1") == []


def test_descendants_nearest_first():
    lineage = tree()
    assert lineage.descendants("s1") == ["m1", "x1", "x2", "m2"]
    assert lineage.descendants("s2") == ["x1", "x2", "m2"]
    assert lineage.descendants("x2") == []


def test_unknown_id_is_an_error_but_unrecorded_parents_are_reachable():
    lineage = Lineage([LineageRecord("c", ("outside",), "prune_regrow", 3)])
    assert lineage.ancestors("c") == ["outside"]
    assert lineage.descendants("outside") == ["c"]
    with pytest.raises(ConfigError, match="'nope' is not in the lineage"):
        lineage.ancestors("nope")


def test_operator_stats():
    stats = tree().operator_stats(["m1", "m2", "s2", "not-recorded"])
    assert stats == {
        "crossover_layerwise": {"children": 1, "on_front": 0},
        "crossover_uniform": {"children": 1, "on_front": 0},
        "mutate_density": {"children": 1, "on_front": 1},
        "prune_regrow": {"children": 1, "on_front": 1},
        "seed": {"children": 2, "on_front": 1},
    }
    assert list(stats) == sorted(stats)


def test_same_id_twice():
    lineage = tree()
    lineage.add(LineageRecord("m1", ("s1",), "prune_regrow", 1, (0.55, 0.6)))  # same content: no-op
    assert len(lineage) == 6
    with pytest.raises(ConfigError, match="m1 is already recorded.*skip it"):
        lineage.add(LineageRecord("m1", ("s2",), "prune_regrow", 1, (0.55, 0.6)))
    with pytest.raises(ConfigError, match="lists itself as a parent"):
        LineageRecord("a", ("a",), "mutate_density", 1)


def test_records_are_frozen_and_validated():
    record = tree().get("s1")
    with pytest.raises(FrozenInstanceError):
        record.operator = "other"
    with pytest.raises(TypeError):
        record.fitness["status"] = "changed"
    with pytest.raises(ConfigError, match="wrap a single parent"):
        LineageRecord("a", "b", "op", 0)
    with pytest.raises(ConfigError, match="generation"):
        LineageRecord("a", (), "op", -1)
    with pytest.raises(ConfigError, match="JSON data"):
        LineageRecord("a", (), "op", 0, fitness={"x": object()})


def test_json_roundtrip_is_plain_data():
    lineage = tree()
    data = lineage.to_json()
    text = json.dumps(data)
    again = Lineage.from_json(json.loads(text))
    assert again == lineage
    assert Lineage.from_json(text) == lineage
    assert [r.candidate_id for r in again] == ["s1", "s2", "m1", "x1", "x2", "m2"]
    assert again.get("x1").parent_ids == ("s1", "s2")


def test_from_json_refuses_foreign_or_damaged_data():
    with pytest.raises(CheckpointError, match="format"):
        Lineage.from_json({"format": "something-else", "records": []})
    with pytest.raises(CheckpointError, match="version"):
        Lineage.from_json({"format": "certevo-lineage", "format_version": 99, "records": []})
    with pytest.raises(CheckpointError, match="malformed"):
        Lineage.from_json({"format": "certevo-lineage", "format_version": 1, "records": [{"candidate_id": "a"}]})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Lineage.from_json('{"format": ')


def test_rows_are_flat():
    rows = tree().rows()
    assert rows[0] == {
        "candidate_id": "s1",
        "generation": 0,
        "operator": "seed",
        "parents": "",
        "objective_0": 0.5,
        "objective_1": 0.6,
        "fitness.certified_accuracy": 0.6,
        "fitness.status": "ok",
    }
    x2 = next(r for r in rows if r["candidate_id"] == "x2")
    assert x2["parents"] == "m1 x1" and x2["objective_0"] is None
    assert all(
        v is None or isinstance(v, (str, int, float)) and not (isinstance(v, float) and math.isnan(v))
        for row in rows
        for v in row.values()
    )
