"""Live progress of a search on the terminal (an observer of the loop)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


class ConsoleProgress:
    """A progress bar over the evaluation budget with rate, hypervolume and best certified
    accuracy at a few sparsity levels; a table of the front at the end."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self.hypervolume = 0.0
        self.best: dict[str, float] = {}
        self.start = time.perf_counter()
        self.done_at_start = 0

    def _describe(self, search) -> str:
        best = "  ".join(f">={k}: {v:.0%}" for k, v in self.best.items())
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = 60.0 * search.evaluated_this_session / elapsed
        return f"gen {max(search.state.generation, 0)}  {rate:5.1f} eval/min  HV {self.hypervolume:.3f}  best cert {best}"

    def on_start(self, search) -> None:
        self.start = time.perf_counter()
        self.done_at_start = len(search.state.archive)
        if search.state.history:
            self.hypervolume = search.state.history[-1]["hypervolume"]
            self.best = search.state.history[-1]["best_certified"]
        self.progress = Progress(
            TextColumn("[bold]evaluations"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.description}"), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(self._describe(search), total=search.planned_evaluations(),
                                           completed=self.done_at_start)

    def on_evaluation(self, search, result) -> None:
        self.progress.update(self.task, advance=1, description=self._describe(search))

    def on_generation(self, search, summary: dict[str, Any]) -> None:
        self.hypervolume = summary["hypervolume"]
        self.best = summary["best_certified"]
        self.progress.update(self.task, completed=summary["evaluations"], description=self._describe(search))

    def on_end(self, search, summary: dict[str, Any]) -> None:
        self.progress.stop()
        self.console.print(front_table(summary["front"], title=f"Pareto front after generation {summary['generations']}"
                                       f" — {summary['evaluations']} candidates, hypervolume {summary['hypervolume']:.3f}"))


def front_table(rows: list[dict[str, Any]], title: str = "Pareto front") -> Table:
    """The front as a rich table, sparsest last."""
    table = Table(title=title)
    for name in ("id", "sparsity", "certified acc.", "clean acc.", "activations", "gen"):
        table.add_column(name, justify="right" if name not in ("id", "activations") else "left")
    for row in rows:
        acts = row["activations"]
        acts_text = ",".join(a if isinstance(a, str) else "per-neuron" for a in acts)
        table.add_row(row["id"], f"{row['sparsity']:.2%}", f"{row['certified_accuracy']:.2%}",
                      f"{row['clean_accuracy']:.2%}", acts_text, str(row.get("generation", "")))
    return table
