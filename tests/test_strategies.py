"""Survival and parent choice of the nsga2 strategy on hand-made archives (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from certevo.evaluators.fitness import FitnessRecord
from certevo.population.genome import random_genome
from certevo.population.selection import pareto_front
from certevo.search.config import load_config
from certevo.search.state import Candidate, SearchState
from certevo.search.strategies import Nsga2Strategy, Proposal

SHAPES = {"fc0": (10, 20), "fc1": (4, 10)}


def archive_state(points: list[tuple[float, float]]) -> tuple[SearchState, list[str]]:
    """A state whose archive holds one candidate per (target sparsity, certified accuracy)."""
    state = SearchState(rng=np.random.default_rng(0), generation=1)
    ids = []
    for k, (sparsity, certified) in enumerate(points):
        genome = random_genome(SHAPES, ("relu",), sparsity, np.random.default_rng(k), "uniform")
        record = FitnessRecord(genome.id, genome.sparsity, certified, certified, None, "ibp", "crown", 0.1, 0.1, 1,
                               10, genome.layer_sparsity(), {})
        state.add(Candidate(genome, record))
        ids.append(genome.id)
    return state, ids


def strategy(*overrides: str) -> Nsga2Strategy:
    config = load_config(None, ["genome.sparsities=[0.5,0.9,0.95]", "search.population_size=4", *overrides])
    return Nsga2Strategy(config, SHAPES, 1)


# Sparse candidates that dominate every denser one: NSGA-II alone would keep only sparse ones.
POINTS = [(0.5, 0.60), (0.6, 0.62), (0.9, 0.64), (0.92, 0.70), (0.96, 0.72), (0.97, 0.71), (0.98, 0.73), (0.99, 0.74)]


def test_level_champions_keep_a_lineage_at_every_target_sparsity():
    state, ids = archive_state(POINTS)
    offspring = [Proposal(state.archive[i].genome, (), "x") for i in ids]
    strategy("search.level_champions=true").select(state, offspring)
    best_per_band = [ids[1], ids[3], ids[7]]  # [0.5, 0.9), [0.9, 0.95), [0.95, 1]
    assert state.population[:3] == best_per_band and len(state.population) == 4
    state.population = []
    strategy().select(state, offspring)
    assert ids[1] not in state.population  # without champions the dense band dies out


def test_level_champions_win_tournaments_like_front_members():
    state, ids = archive_state(POINTS)
    state.population = [ids[1], ids[7], ids[6], ids[5]]  # ids[1] is dominated but a champion
    state.weights = {}
    for flag, expect_dense in (("true", True), ("false", False)):
        state.rng = np.random.default_rng(5)
        children = strategy(f"search.level_champions={flag}", "search.weight_inheritance=false",
                            "search.init=kstarts").offspring(state, 40)
        from_dense = sum(ids[1] in c.parents for c in children)
        assert (from_dense >= 8) == expect_dense, (flag, from_dense)


@pytest.mark.parametrize("flag", ["true", "false"])
def test_survival_is_deterministic(flag):
    populations = []
    for _ in range(2):
        state, ids = archive_state(POINTS)
        strategy(f"search.level_champions={flag}").select(state, [Proposal(state.archive[i].genome, (), "x") for i in ids])
        populations.append(state.population)
    assert populations[0] == populations[1]


def test_the_archive_front_kept_while_adding_equals_a_sort_of_the_archive_also_after_a_checkpoint():
    """The search asks for its archive's front at every generation end; it is kept up to
    date as candidates arrive instead of sorting the archive each time."""
    rng = np.random.default_rng(3)
    points = [(float(s), float(c)) for s, c in zip(rng.choice([0.5, 0.7, 0.9], 40), rng.choice([0.2, 0.4, 0.6], 40))]
    state, ids = archive_state(points)
    failed = random_genome(SHAPES, ("relu",), 0.95, np.random.default_rng(99), "uniform")
    state.add(Candidate(failed, FitnessRecord.failed(failed, "out of memory")))

    def sorted_front(s: SearchState) -> list[str]:
        ok = [c for c in s.archive.values() if c.record.ok]
        return [c.id for c in pareto_front(ok, [c.record.objectives for c in ok])]

    expected = sorted_front(state)
    assert failed.id not in expected and 1 < len(expected) < len(set(ids))
    assert [c.id for c in state.front()] == expected
    restored = SearchState.from_checkpoint(*state.to_checkpoint(), "test")
    assert [c.id for c in restored.front()] == expected
    # A candidate dominating everything replaces the whole front.
    best = random_genome(SHAPES, ("relu",), 0.95, np.random.default_rng(7), "uniform")
    record = FitnessRecord(best.id, best.sparsity, 0.99, 0.99, None, "ibp", "crown", 0.1, 0.1, 1, 10,
                           best.layer_sparsity(), {})
    restored.add(Candidate(best, record))
    assert [c.id for c in restored.front()] == sorted_front(restored) == [best.id]


def test_an_island_proposing_a_few_children_at_a_time_avoids_those_still_in_flight():
    """In asynchronous mode an island proposes children a few at a time while the earlier
    ones are still being evaluated. It must avoid them as it avoids evaluated ones: the
    weight-guided operators (regrow, reallocate) are nearly deterministic per parent, so it
    would propose the same children again, wasting evaluations on duplicates. Proposing 3
    children 4 times must give exactly the 12 children proposed at once."""
    from certevo.population.checkpoint import rng_state
    from certevo.search.island_model import Island
    from certevo.search.state import GRADIENT_PREFIX

    state, ids = archive_state([(0.5, 0.6), (0.9, 0.5)])
    rng = np.random.default_rng(0)
    trained = {cid: {**{f"{name}.weight": rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()},
                     **{GRADIENT_PREFIX + name: np.abs(rng.standard_normal(shape)).astype(np.float32)
                        for name, shape in SHAPES.items()}}
               for cid in ids}
    config = load_config(None, ["genome.sparsities=[0.5,0.9]", "genome.activations=[relu]", "search.population_size=2"])

    def island(seed: int) -> Island:
        snapshot = {"index": 0, "generation": 1, "rng": rng_state(np.random.default_rng(seed)), "population": ids,
                    "activation_population": [], "seen": ids}
        return Island(config.to_dict(), SHAPES, 1, snapshot, list(state.archive.values()), trained)

    for seed in range(5):
        at_once = [p.genome.id for p in island(seed).offspring(12)]
        few = island(seed)
        in_turns = [p for _ in range(4) for p in few.offspring(3)]
        assert [p.genome.id for p in in_turns] == at_once, seed
        assert few.snapshot()["pending"] == sorted(set(at_once))  # a resumed island remembers them too
        evaluated = [Candidate(g, FitnessRecord(g.id, g.sparsity, 0.5, 0.5, None, "ibp", "crown", 0.1, 0.1, 1, 10,
                                                g.layer_sparsity(), {}))
                     for g in {p.genome.id: p.genome for p in in_turns}.values()]
        few.accept(in_turns, evaluated, {})
        assert "pending" not in few.snapshot()
