"""What a search's evaluator actors run is pluggable and light: a search runs the actor
class it is given (benchmarks/scaling.py measures the driver with stub actors this way), and
the requests and results that cross to an actor load without torch, so a stub actor stays a
small process."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np

from certevo.cluster.pool import EvaluationTask
from certevo.evaluators.evaluator import Evaluation
from certevo.evaluators.fitness import FitnessRecord
from certevo.population.genome import random_genome
from certevo.search.loop import Search
from certevo.search.run_directory import open_run
from conftest import tiny


def _stub_actor_class() -> type:
    """An actor with EvaluatorActor's methods that trains nothing: accuracy falls with
    sparsity. Defined in a function so that Ray ships the class itself to its workers."""

    class StubActor:
        def __init__(self, spec, threads, device="cpu", stack_size=None) -> None:
            self.name = "stub"

        def ready(self) -> str:
            return self.name

        def evaluate_batch(self, tasks):
            evaluations = []
            for task in tasks:
                g = task.genome
                accuracy = 1.0 - g.sparsity ** 2
                evaluations.append(Evaluation(FitnessRecord(
                    candidate_id=g.id, sparsity=g.sparsity, certified_accuracy=accuracy, clean_accuracy=accuracy,
                    pgd_accuracy=None, train_method="stub", certify_method="stub", eps=0.0, train_eps=0.0,
                    epochs=0, samples=0, layer_sparsity=g.layer_sparsity(), timings={},
                    kstarts={"magnitude": accuracy})))
            return evaluations, self.name, 0.0

    return StubActor


def test_a_search_evaluates_with_the_actor_class_it_is_given(ray_session, tmp_path):
    search = Search.create(tiny(), tmp_path / "run")
    search.actor_class = _stub_actor_class()
    result = search.run()
    journal = list(open_run(tmp_path / "run").journal_records().values())
    # Every candidate of the whole search (K-starts and 3 generations) went to the stub.
    assert len(journal) == result.evaluations > 4
    assert {record.train_method for record in journal} == {"stub"}
    assert result.history[-1]["generation"] == 3


def test_requests_and_results_load_without_torch(tmp_path):
    genome = random_genome({"fc1": (8, 4)}, ["relu"], 0.5, np.random.default_rng(0))
    request = EvaluationTask(genome, epochs=2)
    evaluation = Evaluation(FitnessRecord.failed(genome, "not evaluated"))
    # Ray pickles what crosses to an actor; this is what a worker unpickles (in memory only).
    payload = pickle.dumps((request, evaluation))
    code = ("import pickle, sys\n"
            "request, evaluation = pickle.loads(sys.stdin.buffer.read())\n"
            "print(request.key, evaluation.record.failure, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout.decode().split() == [genome.id, "not", "evaluated", "False"]
