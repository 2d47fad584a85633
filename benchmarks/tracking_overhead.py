"""What MLflow tracking costs a search: the same search (default: the digits default of
``certevo launch``) run without and with ``MlflowTracker()`` (default SQLite store in the run
directory), same seed, fresh run directories, one Ray session.

Printed per pair and in total: the wall time of each search (``Search.run``), the time the
driver spent blocked inside the tracker's hooks (timed from outside, by a wrapper observer
around the tracker, per hook; also the driver process's CPU time meanwhile, both threads,
which other processes' load moves less), the tracker's own accounting (``seconds_spent``,
``background_seconds``), and whether both searches found the same front. The last line is
one JSON object: ``ratio`` = tracked wall / untracked wall (sums over the pairs),
``blocking_share`` = driver time blocked in tracker hooks / tracked wall, and the figures
behind them. With ``--repeats N`` the order alternates (untracked first, then tracked first,
...) so warm-up effects do not all land on one side.

    python benchmarks/tracking_overhead.py [--repeats 2] [--set search.generations=4 ...]
        [--tracking-uri http://127.0.0.1:5000] [--keep DIR]

The machine is shared: other processes' load moves wall times by seconds, so the ratio of
one pair is noisy; the blocking time is the tracker's own and far steadier.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certevo.cluster.connect import connect  # noqa: E402
from certevo.search.config import load_config  # noqa: E402
from certevo.search.loop import Search  # noqa: E402
from certevo.search.observer import SearchObserver  # noqa: E402
from certevo.search.tracking import MlflowTracker  # noqa: E402

HOOKS = ("on_start", "on_evaluation", "on_generation", "on_end", "on_error")


class TimedObserver(SearchObserver):
    """Forwards every hook to ``inner`` and adds the time each call blocked the driver."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.last_return = 0.0
        self.gap = 0.0

    def _call(self, hook: str, *args: Any) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        if hook == "on_end":  # from the last generation's hook to the end: what the tracker's thread had then
            self.gap = start - self.last_return
        try:
            getattr(self.inner, hook)(*args)
        finally:
            self.last_return = time.perf_counter()
            self.seconds[hook] = self.seconds.get(hook, 0.0) + self.last_return - start
            self.cpu[hook] = self.cpu.get(hook, 0.0) + time.process_time() - cpu
            self.calls[hook] = self.calls.get(hook, 0) + 1

    def on_start(self, search: Any) -> None:
        self._call("on_start", search)

    def on_evaluation(self, search: Any, result: Any) -> None:
        self._call("on_evaluation", search, result)

    def on_generation(self, search: Any, summary: Any) -> None:
        self._call("on_generation", search, summary)

    def on_end(self, search: Any, summary: Any) -> None:
        self._call("on_end", search, summary)

    def on_error(self, search: Any, error: BaseException) -> None:
        self._call("on_error", search, error)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def run_once(overrides: list[str], run_dir: Path, tracked: bool, tracking_uri: str | None) -> dict[str, Any]:
    config = load_config(None, overrides)
    observers: list[Any] = []
    timed = None
    if tracked:
        timed = TimedObserver(MlflowTracker(tracking_uri) if tracking_uri else MlflowTracker())
        observers.append(timed)
    search = Search.create(config, run_dir, observers)
    start = time.perf_counter()
    result = search.run()
    wall = time.perf_counter() - start
    out: dict[str, Any] = {"wall": wall, "front": sorted(c.id for c in result.front),
                           "generations": search.state.generation, "evaluations": len(search.state.archive)}
    if timed is not None:
        tracker = timed.inner
        out.update(blocking=timed.total, by_hook=dict(timed.seconds), calls=dict(timed.calls),
                   cpu_in_hooks=sum(timed.cpu.values()), gap_before_on_end=timed.gap,
                   tracker_seconds_spent=tracker.seconds_spent, background_seconds=tracker.background_seconds,
                   unlogged=list(tracker.unlogged), child_runs=len(tracker.child_run_ids))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides for both searches (default: the launch default)")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of searches (order alternates)")
    parser.add_argument("--tracking-uri", default=None, help="default: SQLite in each run directory")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories under this folder")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray session")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1; got {args.repeats}")

    connect(num_cpus=args.cpus)
    pairs = []
    with tempfile.TemporaryDirectory(prefix="certevo-tracking-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for i in range(args.repeats):
            order = ("untracked", "tracked") if i % 2 == 0 else ("tracked", "untracked")
            pair: dict[str, Any] = {}
            for kind in order:
                run_dir = root / f"{time.strftime('%H%M%S')}-{i}-{kind}"
                pair[kind] = run_once(args.overrides, run_dir, kind == "tracked", args.tracking_uri)
                print(f"[{i}] {kind:9s} wall {pair[kind]['wall']:6.2f} s", flush=True)
            u, t = pair["untracked"], pair["tracked"]
            by_hook = ", ".join(f"{k} {v:.3f} s ({t['calls'][k]})" for k, v in t["by_hook"].items())
            print(f"[{i}] tracked search: blocked in tracker hooks {t['blocking']:.3f} s "
                  f"({100 * t['blocking'] / t['wall']:.2f} % of its wall); by hook: {by_hook}")
            print(f"[{i}] driver process CPU while blocked in hooks {t['cpu_in_hooks']:.3f} s (both threads; "
                  f"less load-dependent than the wall figure); last on_generation -> on_end {t['gap_before_on_end']:.3f} s")
            print(f"[{i}] tracker's own count {t['tracker_seconds_spent']:.3f} s, background thread "
                  f"{t['background_seconds']:.2f} s, child runs {t['child_runs']}, unlogged {len(t['unlogged'])}; "
                  f"wall ratio {t['wall'] / u['wall']:.3f}; same front: {u['front'] == t['front']}", flush=True)
            pairs.append(pair)

    untracked = sum(p["untracked"]["wall"] for p in pairs)
    tracked = sum(p["tracked"]["wall"] for p in pairs)
    blocking = sum(p["tracked"]["blocking"] for p in pairs)
    hooks: dict[str, float] = {}
    for p in pairs:
        for k, v in p["tracked"]["by_hook"].items():
            hooks[k] = hooks.get(k, 0.0) + v
    print(f"\ntotal over {len(pairs)} pair(s): untracked wall {untracked:.2f} s, tracked wall {tracked:.2f} s "
          f"(overhead {100 * (tracked - untracked) / untracked:+.2f} %); driver blocked in tracker hooks "
          f"{blocking:.3f} s = {100 * blocking / tracked:.2f} % of the tracked wall (target < 2 %)")
    summary = {
        "ratio": tracked / untracked,
        "blocking_share": blocking / tracked,
        "blocking_seconds": blocking,
        "blocking_by_hook": hooks,
        "cpu_in_hooks": sum(p["tracked"]["cpu_in_hooks"] for p in pairs),
        "untracked_wall": untracked,
        "tracked_wall": tracked,
        "pairs": len(pairs),
        "same_front": all(p["untracked"]["front"] == p["tracked"]["front"] for p in pairs),
        "unlogged": sum(len(p["tracked"]["unlogged"]) for p in pairs),
        "overrides": args.overrides,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
