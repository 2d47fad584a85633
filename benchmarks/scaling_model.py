"""The model behind benchmarks/scaling.py's figures for worker counts it cannot start:
the driver's cost per result fitted on a measured search, and a discrete-event simulation
of both search modes on N workers (see scaling.py's docstring for the method).

Run alone, it simulates from costs scaling.py printed (``driver_cost_async`` and
``ray_round_trip_ms`` of its JSON line), without starting anything:

    python benchmarks/scaling_model.py --workers 1000 --cost 0.035 0 0 --round-trip-ms 1.2
"""

from __future__ import annotations

import argparse
import heapq
import math

import numpy as np

#: Stub evaluation times: log-normal, median 1 s x the time scale, sigma 0.5.
MEDIAN_SECONDS, SIGMA = 1.0, 0.5


def driver_cost(run: dict, per: int) -> tuple[float, float, float]:
    """The driver's seconds for ``per`` results against the archive size a, as c0 + c1 a +
    c2 a^2 (non-negative least squares on the saturated run's arrivals: the per-generation
    work holds a Pareto sort and a checkpoint of the whole archive)."""
    from scipy.optimize import nnls

    arrivals, base = run["arrivals"], run["archive_before"]
    ks = range(0, len(arrivals) - per, per)
    sizes = np.array([base + k for k in ks], dtype=float)
    costs = np.array([arrivals[k + per] - arrivals[k] for k in ks])
    coefficients, _ = nnls(np.stack([np.ones_like(sizes), sizes, sizes ** 2], axis=1), costs)
    return tuple(float(c) for c in coefficients)


def cost_at(cost: tuple[float, ...], archive: float) -> float:
    """Seconds of ``cost`` (see :func:`driver_cost`) at an archive of ``archive`` candidates."""
    return sum(c * archive ** k for k, c in enumerate(cost))


# -- the simulation -------------------------------------------------------------------------
def simulate(mode: str, workers: int, scale: float, evaluations: int, cost: tuple[float, ...], round_trip: float,
             archive0: int, population: int = 12, grows: bool = True, seed: int = 0) -> float:
    """Utilisation over the evolutionary phase (to the last dispatch, as measured) of a
    discrete-event model of the search (see the module docstring). ``cost``: the driver's
    seconds per ``population`` results against the archive size (:func:`driver_cost`);
    ``grows`` False holds it at its value for the initial archive."""
    rng = np.random.default_rng(seed)

    def draw() -> float:
        return scale * MEDIAN_SECONDS * math.exp(SIGMA * rng.standard_normal())

    def work(archive: int) -> float:
        return cost_at(cost, archive if grows else archive0)

    half = round_trip / 2
    spans: list[tuple[float, float]] = []
    if mode == "generational":
        now, done = 0.0, 0
        while done < evaluations:
            batch = min(population, evaluations - done)
            share = math.ceil(batch / min(workers, batch))  # the pool's batches: the queue split over free actors
            slowest = 0.0
            for first in range(0, batch, share):
                clock = now + half
                for _ in range(min(share, batch - first)):
                    d = draw()
                    spans.append((clock, clock + d))
                    clock += d
                slowest = max(slowest, clock - now - half)
            now += half + slowest + half + work(archive0 + done)
            done += batch
    else:  # each result costs the driver 1/population of a generation's work, in arrival order
        heap: list[float] = []
        for _ in range(min(workers, evaluations)):
            d = draw()
            spans.append((half, half + d))
            heapq.heappush(heap, half + d)
        driver_free, dispatched, absorbed = 0.0, len(heap), 0
        while heap:
            finished = heapq.heappop(heap)
            driver_free = max(driver_free, finished + half) + work(archive0 + absorbed) / population
            absorbed += 1
            if dispatched < evaluations:
                start, d = driver_free + half, draw()
                spans.append((start, start + d))
                heapq.heappush(heap, start + d)
                dispatched += 1
    last_dispatch = max(s for s, _ in spans)  # as measured: the last candidate to start
    busy = sum(max(0.0, min(e, last_dispatch) - s) for s, e in spans)
    return busy / (workers * last_dispatch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1000])
    parser.add_argument("--cost", type=float, nargs="+", required=True,
                        help="the driver's seconds per 12 results as c0 [c1 [c2]] against the archive size")
    parser.add_argument("--round-trip-ms", type=float, default=1.2, help="Ray round trip of one call")
    parser.add_argument("--evaluations-per-worker", type=int, default=10, help="asynchronous: children per worker")
    parser.add_argument("--generations", type=int, default=8, help="generational: generations of 12")
    parser.add_argument("--archive", type=int, default=22, help="candidates after the K-starts")
    args = parser.parse_args()
    for workers in args.workers:
        for mode in ("generational", "asynchronous"):
            evaluations = args.generations * 12
            if mode == "asynchronous":
                evaluations = max(args.evaluations_per_worker * workers, evaluations)
            value = simulate(mode, workers, 1.0, evaluations, tuple(args.cost), args.round_trip_ms / 1000,
                             args.archive)
            print(f"SIMULATED {mode} at {workers} workers ({evaluations} evaluations): {value:.1%}")


if __name__ == "__main__":
    main()
