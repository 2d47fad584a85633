"""Live progress of a search (an observer of the loop): where people look at it.

On a terminal: one progress line fitted to its width. The count and the time left always
show; the bar shrinks, and the rate, hypervolume and best certified accuracies are dropped
from the least important end when the line would not fit (80 columns and less).
Elsewhere (a log file, ``nohup``, ``ray job submit``: stderr is not a terminal) a live bar
shows nothing until the end, so a plain line is printed and flushed per generation (the
K-starts end as generation 0), e.g.
``gen 3/8  62/118 evaluations  41.2 eval/min  HV 0.712  best cert >=0.9: 61.3%  eta 0:00:14``.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from certevo.population.sparsity_text import format_sparsity
from certevo.search.certified_caption import search_caption
from certevo.search.observer import SearchObserver

BAR_MIN, BAR_MAX = 10, 40
ETA_WIDTH = 8  # "-:--:--", "0:00:14", up to "99:59:59"


class ConsoleProgress(SearchObserver):
    """Progress over the evaluation budget with rate, hypervolume and best certified
    accuracy at a few sparsity levels; a table of the front at the end. ``plain`` (default:
    the console is not a terminal) prints one line per generation instead of a live bar."""

    def __init__(self, console: Console | None = None, *, plain: bool | None = None) -> None:
        self.console = console or Console(stderr=True)
        interactive = (self.console.is_terminal and not self.console.is_dumb_terminal) or self.console.is_jupyter
        self.plain = (not interactive) if plain is None else plain
        self.progress: Progress | None = None
        self.bar: BarColumn | None = None
        self.task = None
        self.hypervolume = 0.0
        self.best: dict[str, float] = {}
        self.start = time.perf_counter()
        self.done_at_start = 0

    # -- text -----------------------------------------------------------------------
    def _rate(self, search) -> float:
        """Evaluations per minute in this session."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return 60.0 * search.evaluated_this_session / elapsed

    def _generation(self, search) -> str:
        return f"gen {max(search.state.generation, 0)}/{search.config.search.generations}"

    def _details(self, search, digits: int) -> list[str]:
        """Rate, hypervolume, best certified per level: most important first."""
        parts = [f"{self._rate(search):.{digits}f} eval/min", f"HV {self.hypervolume:.3f}"]
        best = [f">={k}: {v:.{digits}%}" for k, v in self.best.items()]
        if best:
            parts += [f"best cert {best[0]}", *best[1:]]
        return parts

    def _eta(self, search, done: int) -> str:
        left = max(search.planned_evaluations() - done, 0)
        rate = self._rate(search) / 60.0
        if left == 0:
            return "0:00:00"
        if search.evaluated_this_session == 0 or rate <= 0:
            return "-:--:--"
        return str(timedelta(seconds=round(left / rate)))

    def plain_line(self, search, done: int) -> str:
        """The line printed per generation when the output is not a terminal."""
        return "  ".join([self._generation(search), f"{done}/{search.planned_evaluations()} evaluations",
                          *self._details(search, 1), f"eta {self._eta(search, done)}"])

    def _fit(self, search) -> dict[str, str]:
        """The head and tail texts for the console's current width, and the bar width
        (set on the bar column): the count and time left never drop out."""
        width = self.console.width
        total = search.planned_evaluations()
        head = self._generation(search)
        count = 2 * len(str(total)) + 1
        room = width - len(head) - count - ETA_WIDTH - 5  # 4 gaps between 5 columns, 1 spare
        if room < 3:  # very narrow: the generation goes before the count and time left
            room += len(head) + 1
            head = ""
        tail = ""
        for part in self._details(search, 0):
            longer = f"{tail}  {part}" if tail else part
            if len(longer) > room - BAR_MIN - 1:
                break
            tail = longer
        self.bar.bar_width = max(3, min(BAR_MAX, room - len(tail) - (1 if tail else 0)))
        return {"head": head, "tail": tail}

    # -- observer hooks ---------------------------------------------------------------
    def on_start(self, search) -> None:
        self.start = time.perf_counter()
        self.done_at_start = len(search.state.archive)
        if search.state.history:
            self.hypervolume = search.state.history[-1]["hypervolume"]
            self.best = search.state.history[-1]["best_certified"]
        if self.plain:
            self._say(f"search in {search.run_dir}: {search.planned_evaluations()} evaluations planned "
                      f"({search.config.search.generations} generations after the K-starts), "
                      f"{self.done_at_start} done; one line per generation follows")
            return
        self.bar = BarColumn(bar_width=BAR_MIN)
        self.progress = Progress(
            TextColumn("[bold]{task.fields[head]}"), self.bar, MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[tail]}"), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("evaluations", total=search.planned_evaluations(),
                                           completed=self.done_at_start, **self._fit(search))

    def on_evaluation(self, search, result) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, **self._fit(search))

    def on_generation(self, search, summary: dict[str, Any]) -> None:
        self.hypervolume = summary["hypervolume"]
        self.best = summary["best_certified"]
        if self.progress is not None:
            self.progress.update(self.task, completed=summary["evaluations"], **self._fit(search))
        elif self.plain:
            line = self.plain_line(search, summary["evaluations"])
            # An asynchronous resume ends the generations after its checkpoint again, from
            # the journal: nothing is evaluated in them, so the rate says 0.
            self._say(line + ("  (replayed from the journal)" if summary.get("replayed") else ""))

    def on_error(self, search, error: BaseException) -> None:
        """Stop the live line, so the message that follows starts on a line of its own."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_end(self, search, summary: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.console.print(front_table(
            summary["front"],
            title=f"Pareto front after generation {summary['generations']} — {summary['evaluations']} candidates, "
                  f"hypervolume {summary['hypervolume']:.3f}",
            caption=search_caption(search)))
        self.console.file.flush()

    def _say(self, line: str) -> None:
        """One plain line, written at once (a log file shows it while the search runs)."""
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        self.console.file.flush()


def front_table(rows: list[dict[str, Any]], title: str = "Pareto front", caption: str | None = None) -> Table:
    """The front as a rich table, sparsest last; sparsities are cut, never rounded up
    (certevo.population.sparsity_text). ``caption``: what the certified accuracy refers to."""
    table = Table(title=title, caption=caption)
    for name in ("id", "sparsity", "certified acc.", "clean acc.", "activations", "gen"):
        table.add_column(name, justify="right" if name not in ("id", "activations") else "left")
    for row in rows:
        acts = row["activations"]
        acts_text = ",".join(a if isinstance(a, str) else "per-neuron" for a in acts)
        table.add_row(row["id"], format_sparsity(row["sparsity"]), f"{row['certified_accuracy']:.2%}",
                      f"{row['clean_accuracy']:.2%}", acts_text, str(row.get("generation", "")))
    return table
