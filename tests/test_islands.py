"""Islands: parallel populations in Ray actors, migration, restoring a dead island."""

from __future__ import annotations

import json

import pytest
import ray

from certevo.search.island_model import offspring_counts
from certevo.search.loop import Search
from certevo.search.observer import SearchObserver
from conftest import archive_view, front_view, tiny

ISLANDS = ["search.islands=2", "search.migration_interval=1", "search.migrants=1", "search.generations=2"]


@pytest.fixture(scope="module")
def two_islands(ray_session, tmp_path_factory):
    search = Search.create(tiny(*ISLANDS), tmp_path_factory.mktemp("islands") / "run")
    search.run()
    return search


def lineage_view(search) -> list[tuple[str, tuple[str, ...], str, int]]:
    return [(r.candidate_id, tuple(r.parent_ids), r.operator, r.generation) for r in search.state.lineage]


def test_one_island_in_an_actor_equals_the_single_population_search(ray_session, tmp_path):
    local = Search.create(tiny(), tmp_path / "local")
    local.run()
    hosted = Search.create(tiny("cluster.island_actors=true"), tmp_path / "actor")
    hosted.run()
    assert type(hosted.islands[0]).__name__ == "ActorIsland"
    assert type(local.islands[0]).__name__ == "LocalIsland"
    assert archive_view(hosted) == archive_view(local)
    assert front_view(hosted.state) == front_view(local.state)
    assert lineage_view(hosted) == lineage_view(local)


def test_islands_evolve_in_actors_and_exchange_their_best(two_islands):
    search = two_islands
    assert [type(i).__name__ for i in search.islands] == ["ActorIsland", "ActorIsland"]
    # K-starts (2 x 2), two pruned starts at 0.9, then 2 generations of 4 offspring on each of
    # 2 islands, nothing evaluated twice.
    assert len(search.state.archive) <= 4 + 2 + 2 * 4 * 2
    ids = [json.loads(line)["id"] for line in (search.run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == len(search.state.archive)
    # Migration after every generation: each island sent one member, which the next island now knows.
    for summary in search.state.history[1:]:
        assert len(summary["migrants"]) == 2 and all(len(m) == 1 for m in summary["migrants"])
    sent_by_0 = search.state.history[-1]["migrants"][0][0]
    assert sent_by_0 in search.state.islands[1]["seen"]
    # The islands diverged: their own offspring differ.
    seen = [set(s["seen"]) for s in search.state.islands]
    assert seen[0] != seen[1]
    assert search.state.front()


def test_islands_are_deterministic(ray_session, two_islands, tmp_path):
    again = Search.create(tiny(*ISLANDS), tmp_path / "again")
    again.run()
    assert archive_view(again) == archive_view(two_islands)
    assert again.state.islands == two_islands.state.islands


class KillIsland(SearchObserver):
    """Kills island 1's actor once, in the middle of generation 2's evaluations."""

    def __init__(self) -> None:
        self.killed = False

    def on_start(self, search) -> None: ...
    def on_generation(self, search, summary) -> None: ...
    def on_end(self, search, summary) -> None: ...

    def on_evaluation(self, search, result) -> None:
        if not self.killed and search.state.generation == 1:
            ray.kill(search.islands[1].actor, no_restart=True)
            self.killed = True


def test_a_killed_island_is_restored_from_its_checkpoint(ray_session, two_islands, tmp_path):
    killer = KillIsland()
    search = Search.create(tiny(*ISLANDS), tmp_path / "faulty", [killer])
    search.run()
    assert killer.killed
    assert search.islands[1].restarts == 1
    assert archive_view(search) == archive_view(two_islands)
    assert front_view(search.state) == front_view(two_islands.state)
    assert search.state.islands == two_islands.state.islands


def test_islands_resume_to_the_uninterrupted_result(ray_session, two_islands, tmp_path):
    first = Search.create(tiny(*ISLANDS[:-1], "search.generations=1"), tmp_path / "resumed")
    first.run()
    resumed = Search.resume(tmp_path / "resumed", generations=2)
    resumed.run()
    assert archive_view(resumed) == archive_view(two_islands)
    assert resumed.state.islands == two_islands.state.islands


@pytest.mark.parametrize("islands, size, left, expected", [
    (1, 4, 100, [4]), (1, 4, 3, [3]), (2, 4, 100, [4, 4]), (2, 4, 5, [3, 2]), (3, 4, 2, [1, 1, 0]),
])
def test_offspring_counts_split_a_short_budget(islands, size, left, expected):
    assert offspring_counts(islands, size, left) == expected


def test_bad_island_settings_name_the_field(tmp_path):
    from certevo.population.errors import ConfigError

    with pytest.raises(ConfigError, match=r"search\.islands .*got 0"):
        tiny("search.islands=0")
    with pytest.raises(ConfigError, match=r"search\.migrants must be below search\.population_size"):
        tiny("search.islands=2", "search.migrants=4")
    with pytest.raises(ConfigError, match=r"cluster\.island_actors"):
        tiny("cluster.island_actors=3")
