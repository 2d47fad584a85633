"""Scenarios on a multi-node local Ray cluster (``ray.cluster_utils.Cluster``), each run in
its own process by tests/test_multinode.py (the tests' shared Ray session stays apart).

    python tests/multinode_scenarios.py node-loss RUN_DIR         -> one JSON line of findings
    python tests/multinode_scenarios.py node-loss-async RUN_DIR   -> the same, search.mode: asynchronous
    python tests/multinode_scenarios.py serve                     -> prints the address; runs until stdin closes
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from certevo.search.observer import SearchObserver  # noqa: E402

WORKERS = 3


def start_cluster() -> Cluster:
    """A head node without CPUs (only the driver and islands live there) and three
    one-CPU worker nodes, all on this machine."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(WORKERS):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    return cluster


class Faults(SearchObserver):
    """Removes the worker node of a busy evaluator in generation 1, kills island 1 in
    generation 2 (in both search modes: ``state.generation`` is 0 while generation 1's
    children are evaluated, after the K-starts). Remembers which worker delivered each
    result (``ip:pid``), and the lost evaluator's process id and how many evaluations were
    running when its node went."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.removed_node: str | None = None
        self.lost_task: str | None = None
        self.lost_pid: int | None = None
        self.running_at_removal = 0
        self.island_killed = False
        self.workers: dict[str, list[str]] = {}  # candidate id -> workers that delivered a result for it

    def on_start(self, search) -> None: ...
    def on_generation(self, search, summary) -> None: ...
    def on_end(self, search, summary) -> None: ...

    def on_evaluation(self, search, result) -> None:
        self.workers.setdefault(result.task.key, []).append(result.worker)
        running = search.pool.running() if self.removed_node is None and search.state.generation == 0 else []
        if running:
            actor, task = running[0]
            info = ray._private.state.actors(actor._actor_id.hex())
            node_id = info["Address"]["NodeID"]
            node = next(n for n in self.cluster.worker_nodes if n.node_id == node_id)
            self.cluster.remove_node(node, allow_graceful=False)
            # On one machine the actor's process can outlive its node's raylet long enough
            # to deliver its batch; a lost machine takes its processes with it.
            try:
                os.kill(info["Pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.removed_node, self.lost_task = node_id, task.key
            self.lost_pid = info["Pid"]
            self.running_at_removal = len(running)
        if not self.island_killed and search.state.generation == 1:
            ray.kill(search.islands[1].actor, no_restart=True)
            self.island_killed = True


def node_loss(run_dir: Path) -> dict:
    from certevo.search.loop import Search
    from conftest import archive_view, front_view, tiny

    cluster = start_cluster()
    try:
        ray.init(address=cluster.address)
        settings = ["search.islands=2", "search.migration_interval=1", "search.migrants=1", "search.generations=2",
                    "cluster.actors=2"]
        faults = Faults(cluster)
        faulty = Search.create(tiny(*settings), run_dir / "faulty", [faults])
        faulty.run()
        reference = Search.create(tiny(*settings), run_dir / "reference")
        reference.run()
        journal = (run_dir / "faulty" / "evaluations.jsonl").read_text().splitlines()
        return {
            "removed_node": faults.removed_node,
            "lost_task": faults.lost_task,
            "island_killed": faults.island_killed,
            "replacements": faulty.pool.replacements,
            "island_restarts": [i.restarts for i in faulty.islands],
            "journal_ids": [json.loads(line)["id"] for line in journal],
            "archive": archive_view(faulty),
            "reference_archive": archive_view(reference),
            "front": front_view(faulty.state),
            "reference_front": front_view(reference.state),
            "lost_task_ok": faulty.state.archive[faults.lost_task].record.ok if faults.lost_task else None,
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


def node_loss_async(run_dir: Path) -> dict:
    """The faults of ``node-loss`` in an asynchronous search with two islands. Asynchronous
    runs are not reproducible, so the findings are what the run itself recorded (no
    reference run)."""
    from certevo.search.loop import Search
    from conftest import tiny

    cluster = start_cluster()
    try:
        ray.init(address=cluster.address)
        faults = Faults(cluster)
        search = Search.create(tiny("search.mode=asynchronous", "search.islands=2", "search.migration_interval=1",
                                    "search.migrants=1", "search.generations=2", "cluster.actors=2"),
                               run_dir / "faulty", [faults])
        search.run()
        journal = (run_dir / "faulty" / "evaluations.jsonl").read_text().splitlines()
        state, lost = search.state, faults.lost_task
        return {
            "removed_node": faults.removed_node,
            "lost_task": lost,
            "lost_pid": faults.lost_pid,
            "running_at_removal": faults.running_at_removal,
            "lost_task_workers": faults.workers.get(lost, []),
            "lost_task_ok": state.archive[lost].record.ok if lost in state.archive else None,
            "island_killed": faults.island_killed,
            "replacements": search.pool.replacements,
            "island_restarts": [i.restarts for i in search.islands],
            "journal_ids": [json.loads(line)["id"] for line in journal],
            "archive_ids": list(state.archive),
            "lineage": {r.candidate_id: [r.generation, r.operator, list(r.parent_ids)] for r in state.lineage},
            "history": [[h["generation"], h.get("offspring")] for h in state.history],
            "front_generations": json.loads((run_dir / "faulty" / "front.json").read_text())["generations"],
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


def serve() -> None:
    cluster = start_cluster()
    try:
        print(cluster.address, flush=True)
        sys.stdin.read()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "node-loss":
        print(json.dumps(node_loss(Path(sys.argv[2]))))
    elif sys.argv[1] == "node-loss-async":
        print(json.dumps(node_loss_async(Path(sys.argv[2]))))
    elif sys.argv[1] == "serve":
        serve()
    else:
        raise SystemExit(f"unknown scenario {sys.argv[1]!r}; use node-loss, node-loss-async or serve")
