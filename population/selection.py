"""NSGA-II selection, non-dominated ranks, Pareto front and hypervolume.

Sorting and selection are DEAP's own ``tools.sortNondominated`` and ``tools.selNSGA2``;
this module only wraps arbitrary items into individuals DEAP can sort. All objectives
are maximised (certevo's are sparsity and certified accuracy).

No ``deap.creator.create`` classes: those are made at run time and fail to unpickle on
Ray workers. :class:`MaximiseFitness` and :class:`Individual` are plain module-level
classes; a fitness stores its weights per instance (one ``1.0`` per objective), so one
class serves any number of objectives and pickles by reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
from deap import base, tools

from certevo.population.errors import ConfigError

T = TypeVar("T")

#: Fixed reference point of :func:`hypervolume_2d`: with both objectives in [0, 1], the
#: hypervolume is the share of the unit square the front dominates.
HV_REFERENCE_2D: tuple[float, float] = (0.0, 0.0)

__all__ = [
    "HV_REFERENCE_2D",
    "IncrementalFront",
    "Individual",
    "MaximiseFitness",
    "hypervolume",
    "hypervolume_2d",
    "nondominated_ranks",
    "pareto_front",
    "select_nsga2",
]


class MaximiseFitness(base.Fitness):
    """A DEAP fitness whose every objective is maximised.

    ``weights`` is set per instance to ``(1.0,) * len(values)`` instead of per class, so
    no class has to be created per number of objectives.
    """

    weights: tuple[float, ...] = ()

    def __init__(self, values: Sequence[float] = ()) -> None:
        self.weights = (1.0,) * len(values)
        super().__init__(tuple(values))

    def __deepcopy__(self, memo: dict) -> MaximiseFitness:
        copy = self.__class__(self.values)
        copy.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("weights", "wvalues")})
        return copy


class Individual:
    """An item wrapped for DEAP: its position in the input and a :class:`MaximiseFitness`."""

    __slots__ = ("item", "index", "fitness")

    def __init__(self, item: Any, index: int, values: Sequence[float]) -> None:
        self.item = item
        self.index = index
        self.fitness = MaximiseFitness(values)

    def __getstate__(self) -> tuple[Any, int, MaximiseFitness]:
        return (self.item, self.index, self.fitness)

    def __setstate__(self, state: tuple[Any, int, MaximiseFitness]) -> None:
        self.item, self.index, self.fitness = state

    def __repr__(self) -> str:
        return f"Individual(index={self.index}, values={self.fitness.values})"


def _objective_rows(objectives: Sequence[Sequence[float]]) -> list[tuple[float, ...]]:
    rows = [tuple(float(v) for v in row) for row in objectives]
    if rows:
        width = len(rows[0])
        if width == 0:
            raise ConfigError("each objectives entry needs at least one value; got an empty tuple")
        for i, row in enumerate(rows):
            if len(row) != width:
                raise ConfigError(
                    f"objectives entry {i} has {len(row)} values but entry 0 has {width}; "
                    "give every item the same objectives"
                )
            if not all(math.isfinite(v) for v in row):
                raise ConfigError(
                    f"objectives entry {i} is {row}; objectives must be finite numbers; give "
                    "a failed candidate the worst value (e.g. 0.0) instead of NaN"
                )
    return rows


def _individuals(items: Sequence[Any], objectives: Sequence[Sequence[float]]) -> list[Individual]:
    rows = _objective_rows(objectives)
    if len(rows) != len(items):
        raise ConfigError(
            f"got {len(items)} items but {len(rows)} objectives entries; give one "
            "objectives tuple per item"
        )
    return [Individual(item, i, row) for i, (item, row) in enumerate(zip(items, rows))]


def select_nsga2(items: Sequence[T], objectives: Sequence[Sequence[float]], k: int) -> list[T]:
    """The ``k`` items NSGA-II keeps (``deap.tools.selNSGA2``), all objectives maximised.

    Whole fronts are taken in rank order; the last, partially taken front is cut by
    crowding distance. So if ``k`` is at least the size of the first front, all of it is
    kept. Deterministic for the same input order.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= len(items):
        raise ConfigError(
            f"select_nsga2 k must be an integer in [0, {len(items)}] (the number of items); "
            f"got {k!r}; pass min(k, len(items)) to keep everything"
        )
    individuals = _individuals(items, objectives)
    if k == 0:
        return []
    return [ind.item for ind in tools.selNSGA2(individuals, int(k))]


def pareto_front(items: Sequence[T], objectives: Sequence[Sequence[float]]) -> list[T]:
    """The non-dominated items (first front of ``deap.tools.sortNondominated``), in input
    order. Items with equal objectives are all on the front if one is."""
    individuals = _individuals(items, objectives)
    if not individuals:
        return []
    front = tools.sortNondominated(individuals, len(individuals), first_front_only=True)[0]
    return [ind.item for ind in sorted(front, key=lambda ind: ind.index)]


class IncrementalFront:
    """The Pareto front of items added one at a time: after every :meth:`add`,
    :meth:`items` equals :func:`pareto_front` of everything added so far (same items, in
    input order; items with equal objectives all on the front if one is), at a cost of
    the front's size per item instead of a sort of all of them."""

    def __init__(self) -> None:
        self._members: list[tuple[Any, tuple[float, ...]]] = []
        #: Items offered so far, on the front or not (and those skipped with ``count``).
        self.seen = 0

    def add(self, item: Any, objectives: Sequence[float] | None) -> None:
        """Offer ``item``; ``objectives`` None counts it without offering it (a failed candidate)."""
        self.seen += 1
        if objectives is None:
            return
        row = _objective_rows([objectives])[0]
        if self._members and len(row) != len(self._members[0][1]):
            raise ConfigError(
                f"objectives {row} have {len(row)} values but the front's have {len(self._members[0][1])}; "
                "give every item the same objectives"
            )
        if any(_dominates(kept, row) for _, kept in self._members):
            return
        # An item is only ever removed by a newer one, so the members stay in input order.
        self._members = [(other, kept) for other, kept in self._members if not _dominates(row, kept)]
        self._members.append((item, row))

    def items(self) -> list[Any]:
        """The items on the front, in the order they were added."""
        return [item for item, _ in self._members]


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and better somewhere (DEAP's
    ``Fitness.dominates`` with every weight 1)."""
    better = False
    for x, y in zip(a, b):
        if x > y:
            better = True
        elif x < y:
            return False
    return better


def nondominated_ranks(objectives: Sequence[Sequence[float]]) -> list[int]:
    """Non-domination rank of each objectives tuple (0 = on the Pareto front)."""
    individuals = _individuals(list(range(len(objectives))), objectives)
    ranks = [0] * len(individuals)
    if individuals:
        for rank, front in enumerate(tools.sortNondominated(individuals, len(individuals))):
            for ind in front:
                ranks[ind.index] = rank
    return ranks


def _points(points: Sequence[Sequence[float]], reference: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray([float(v) for v in reference], dtype=np.float64)
    rows = _objective_rows(points)
    array = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1 if rows else ref.size)
    if not np.isfinite(ref).all():
        raise ConfigError(f"hypervolume reference must be finite; got {ref.tolist()}")
    if array.shape[1] != ref.size:
        raise ConfigError(
            f"hypervolume points have {array.shape[1]} objectives but the reference point has "
            f"{ref.size}; give a reference with one value per objective"
        )
    return array, ref


def hypervolume_2d(
    points: Sequence[Sequence[float]], reference: Sequence[float] = HV_REFERENCE_2D
) -> float:
    """Exact area dominated by ``points`` (both objectives maximised) above ``reference``.

    With the default reference ``(0, 0)`` and objectives (sparsity, certified accuracy)
    in [0, 1], this is the share of the unit square the front dominates: ``{(0.5, 0.5)}``
    gives 0.25, ``{(0.5, 1), (1, 0.5)}`` gives 0.75. Points that do not strictly dominate
    the reference contribute nothing; dominated points and duplicates are harmless.
    """
    array, ref = _points(points, reference)
    if ref.size != 2:
        raise ConfigError(f"hypervolume_2d needs a 2-value reference; got {ref.tolist()}; use hypervolume()")
    inside = array[(array[:, 0] > ref[0]) & (array[:, 1] > ref[1])]
    # Sweep by decreasing first objective; each point adds the strip above the best second
    # objective seen so far.
    order = np.lexsort((-inside[:, 1], -inside[:, 0]))
    area, best_y = 0.0, ref[1]
    for x, y in inside[order]:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return float(area)


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Hypervolume dominated by ``points`` (all objectives maximised) above ``reference``.

    Two objectives use the exact sweep of :func:`hypervolume_2d`. More objectives use
    ``moocore.hypervolume`` (the backend DEAP >= 1.4.2 uses for its hypervolume indicator;
    the old ``deap.tools._hypervolume`` module no longer exists) on negated values, since
    moocore minimises.
    """
    array, ref = _points(points, reference)
    if ref.size == 2:
        return hypervolume_2d(array, ref)
    if ref.size == 1:
        return float(max(0.0, (array[:, 0] - ref[0]).max(initial=0.0)))
    try:
        import moocore
    except ImportError as exc:  # pragma: no cover - moocore ships with deap >= 1.4.2
        raise ConfigError(
            f"hypervolume of {ref.size} objectives needs the moocore package, which is not "
            "installed; install deap>=1.4.2 (it depends on moocore) or use 2 objectives"
        ) from exc
    inside = array[(array > ref).all(axis=1)]
    if inside.size == 0:
        return 0.0
    return float(moocore.hypervolume(-inside, ref=-ref))
