"""Search observers are subclasses of certevo.SearchObserver: one that overrides a single hook
follows a real tiny search (its other hooks do nothing, on_error included when the search
fails), and a search refuses anything else when it is built."""

from __future__ import annotations

import pytest

from certevo import ConfigError, SearchObserver
from certevo.search.loop import Search
from conftest import tiny


class Generations(SearchObserver):
    """Overrides on_generation only."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_generation(self, search, summary) -> None:
        self.seen.append(summary["generation"])


class FailAtGeneration(SearchObserver):
    """Overrides on_generation only: stops the search when generation ``at`` ends."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_generation(self, search, summary) -> None:
        if summary["generation"] == self.at:
            raise RuntimeError(f"stopped on purpose after generation {self.at}")


class Errors(SearchObserver):
    """Overrides on_error only."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def on_error(self, search, error) -> None:
        self.errors.append(error)


class DuckTyped:
    """Has every hook, but is not a SearchObserver."""

    def on_start(self, search) -> None: ...
    def on_evaluation(self, search, result) -> None: ...
    def on_generation(self, search, summary) -> None: ...
    def on_end(self, search, summary) -> None: ...
    def on_error(self, search, error) -> None: ...


def test_an_observer_overriding_one_hook_follows_a_whole_search(ray_session, tmp_path):
    generations = Generations()
    result = Search.create(tiny("search.generations=2"), tmp_path / "run", [generations]).run()
    assert generations.seen == [0, 1, 2]  # the K-starts end as generation 0
    assert result.history[-1]["generation"] == 2


def test_a_failing_search_tells_every_observer_and_raises_its_own_error(ray_session, tmp_path):
    generations, errors = Generations(), Errors()
    search = Search.create(tiny(), tmp_path / "run", [generations, FailAtGeneration(0), errors])
    with pytest.raises(RuntimeError, match="stopped on purpose after generation 0") as raised:
        search.run()
    assert generations.seen == [0]  # its on_error (the base class's) did nothing and raised nothing
    assert errors.errors == [raised.value]


@pytest.mark.parametrize("observer", [DuckTyped(), print], ids=["duck-typed", "function"])
def test_a_search_refuses_an_object_that_is_not_an_observer_when_it_is_built(observer, tmp_path):
    with pytest.raises(ConfigError) as refused:
        Search.create(tiny(), tmp_path / "run", [Generations(), observer])
    message = str(refused.value)
    kind = type(observer)
    assert f"observer 1 of the search must be a certevo.SearchObserver; got a {kind.__module__}.{kind.__qualname__}" \
        in message
    assert "subclass certevo.SearchObserver" in message
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_resume_that_refuses_an_observer_leaves_the_runs_settings_unchanged(ray_session, tmp_path):
    run_dir = tmp_path / "run"
    Search.create(tiny("search.generations=1"), run_dir).run()
    before = (run_dir / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match="must be a certevo.SearchObserver"):
        Search.resume(run_dir, generations=3, observers=[DuckTyped()])
    assert (run_dir / "config.yaml").read_bytes() == before  # still generations: 1
    assert Search.resume(run_dir, generations=3).config.search.generations == 3
