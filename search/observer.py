"""The observer of a search: the base class of whatever follows a search from outside
(MLflow tracking, the progress display, mirroring a run directory), and the check that
every observer handed to a search is one.

Imports neither torch nor Ray, so an observer can be written (and imported) without them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from certevo.population.errors import ConfigError

if TYPE_CHECKING:
    from certevo.cluster.pool import TaskResult
    from certevo.search.loop import Search

__all__ = ["SearchObserver", "check_observers"]


class SearchObserver:
    """Hooks the loop calls; observers never change the search (tracking, progress).

    Subclass it and override the hooks you need: each one does nothing by default.
    """

    def on_start(self, search: Search) -> None:
        """The search is about to run (before Ray starts; a resumed search too)."""

    def on_evaluation(self, search: Search, result: TaskResult) -> None:
        """One candidate was evaluated."""

    def on_generation(self, search: Search, summary: dict[str, Any]) -> None:
        """A generation ended (the K-starts end as generation 0) and was checkpointed."""

    def on_end(self, search: Search, summary: dict[str, Any]) -> None:
        """The search reached its generation count or evaluation budget."""

    def on_error(self, search: Search, error: BaseException) -> None:
        """The search stopped early on ``error`` (Ctrl-C included: ``KeyboardInterrupt``);
        the loop raises it again once every observer has been told."""


def check_observers(observers: Iterable[Any]) -> list[SearchObserver]:
    """``observers`` as a list, refusing any that is not a :class:`SearchObserver`."""
    checked = list(observers)
    for position, observer in enumerate(checked):
        if not isinstance(observer, SearchObserver):
            kind = type(observer)
            raise ConfigError(
                f"observer {position} of the search must be a certevo.SearchObserver; got a "
                f"{kind.__module__}.{kind.__qualname__}; make its class subclass certevo.SearchObserver "
                f"(`class {kind.__name__}(certevo.SearchObserver): ...`): the hooks it does not define then do nothing"
            )
    return checked
