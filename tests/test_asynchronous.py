"""Asynchronous (steady-state) evolution on a real local Ray session: the pool that feeds
on demand, and searches in ``search.mode: asynchronous``."""

from __future__ import annotations

import numpy as np

from certevo.cluster.pool import EvaluationPool, EvaluationTask
from certevo.population.genome import random_genome
from certevo.population.seeds import derive_seed
from conftest import tiny


def _genomes(count: int) -> list:
    config = tiny()
    data = config.data.load()
    shapes = config.model.template(data.input_shape, data.num_classes).layer_shapes()
    return [random_genome(shapes, ["relu", "relu"], 0.9, np.random.default_rng(derive_seed(0, "async-pool", i)))
            for i in range(count)]


def test_the_pool_asks_for_work_when_actors_free_up_and_ends_when_told_nothing_more(ray_session):
    genomes = _genomes(7)
    offered: list[str] = []
    absorbed: list[str] = []
    calls: list[tuple[int, int]] = []  # (idle actors, results absorbed when asked)

    def refill(idle: int) -> list[EvaluationTask]:
        calls.append((idle, len(absorbed)))
        # Everything offered so far has been absorbed or is still running: the refill runs
        # between the consumer's steps, never while a result is half taken in.
        assert set(absorbed) <= set(offered)
        if len(offered) == len(genomes):
            return []
        batch = genomes[len(offered):len(offered) + idle]
        offered.extend(g.id for g in batch)
        return [EvaluationTask(g) for g in batch]

    pool = EvaluationPool(tiny().evaluation_spec(), 2)
    try:
        for result in pool.run([], refill=refill):
            absorbed.append(result.task.key)
    finally:
        pool.shutdown()
    # Every task offered yields exactly one result, and the run ended only once refill
    # said "nothing more" with nothing left running.
    assert sorted(absorbed) == sorted(offered) == sorted(g.id for g in genomes)
    assert all(idle >= 1 for idle, _ in calls)
    assert calls[-1] == (calls[-1][0], len(genomes))
    # It asked again as results came in (7 tasks, at most 2 per call): on demand, not once.
    assert len(calls) >= 5
    assert [seen for _, seen in calls] == sorted(seen for _, seen in calls)


def test_the_pool_without_refill_runs_exactly_its_tasks(ray_session):
    genomes = _genomes(3)
    pool = EvaluationPool(tiny().evaluation_spec(), 2)
    try:
        keys = [result.task.key for result in pool.run([EvaluationTask(g) for g in genomes])]
    finally:
        pool.shutdown()
    assert sorted(keys) == sorted(g.id for g in genomes)

