"""The certevo console script, end to end, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def certevo_exe() -> str:
    exe = Path(sys.executable).with_name("certevo")
    if not exe.exists():
        pytest.skip(f"the certevo console script is not installed next to {sys.executable}; run `make test`")
    return str(exe)


def run(*args: str, timeout: float = 600, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([certevo_exe(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config("search.generations=2")))
    return path


@pytest.fixture(scope="module")
def launched(config_file, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    out = run("launch", str(config_file), "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Pareto front" in out.stderr and "certevo resume" in out.stderr
    return run_dir


def test_launch_writes_a_complete_run_directory(launched):
    for name in ("config.yaml", "front.json", "evaluations.jsonl", "checkpoint/state.json"):
        assert (launched / name).exists(), name
    front = json.loads((launched / "front.json").read_text())
    assert front["front"] and front["generations"] == 2


def test_inspect_table_json_lineage_and_plot(launched, tmp_path):
    out = run("inspect", str(launched), "--sort", "certified")
    assert out.returncode == 0, out.stderr
    assert "population (sorted by certified)" in out.stdout and "Pareto front" in out.stdout
    info = json.loads(run("inspect", str(launched), "--json").stdout)
    certified = [r["certified_accuracy"] for r in info["population"]]
    assert info["front"] and len(info["history"]) == 3
    by_cert = json.loads(run("inspect", str(launched), "--json", "--sort", "certified").stdout)["population"]
    assert [r["certified_accuracy"] for r in by_cert] == sorted(certified, reverse=True)
    # Generation 0 already has children (the pruned starts), so the population has some; the
    # latest-born has the longest ancestry.
    children = [r for r in info["population"] + info["front"] if r["parents"]]
    assert children, "the population holds no child: its lineage cannot be shown"
    child = max(children, key=lambda r: r["generation"])
    assert child["inherited_from"] == child["parents"][0] and child["total_epochs"] > child["epochs"]
    tree = json.loads(run("inspect", str(launched), "--json", "--lineage", child["id"][:10]).stdout)["lineage"]
    assert tree["id"] == child["id"] and [p["id"] for p in tree["parents"]] == child["parents"]
    # The tree is the ancestry the search recorded in its checkpoint, up to the K-starts.
    checkpoint = json.loads((launched / "checkpoint" / "state.json").read_text())["state"]
    recorded = {r["candidate_id"]: r for r in checkpoint["lineage"]["records"]}

    def check(node: dict) -> None:
        record = recorded[node["id"]]
        assert (node["operator"], node["generation"]) == (record["operator"], record["generation"])
        assert [p["id"] for p in node["parents"]] == record["parent_ids"]
        assert node["parents"] or node["operator"] == "kstart"
        for parent in node["parents"]:
            check(parent)

    check(tree)
    text = run("inspect", str(launched), "--lineage", child["id"]).stdout
    assert child["operator"] in text
    plot = tmp_path / "front.png"
    out = run("inspect", str(launched), "--plot", str(plot))
    assert out.returncode == 0, out.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # ... and its history per generation (hypervolume, best certified, front size), as the README promises
    history = tmp_path / "front-history.png"
    assert history.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(history) in out.stdout.replace("\n", "")


def test_export_then_train(launched, tmp_path):
    out = run("export", str(launched), "--knee", "-o", str(tmp_path / "best"))
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "best.json").read_text())
    assert (tmp_path / "best.safetensors").is_file()
    front_ids = {r["id"] for r in json.loads((launched / "front.json").read_text())["front"]}
    assert manifest["candidate_id"] in front_ids
    assert manifest["trained_weights"]  # the search's trained weights travel with the mask
    out = run("train", str(tmp_path / "best.json"), "--epochs", "2", "-o", str(tmp_path / "trained"))
    assert out.returncode == 0, out.stderr
    assert "fine-tuned from the search's trained weights" in out.stdout
    report = json.loads((tmp_path / "trained" / "report.json").read_text())
    assert (tmp_path / "trained" / "weights.safetensors").is_file()
    assert report["start"] == "trained"
    assert report["certified_accuracy_crown"] <= report["clean_accuracy"]
    assert abs(report["sparsity"] - manifest["sparsity"]) < 1e-12
    out = run("train", str(tmp_path / "best.json"), "--epochs", "2", "--from-scratch", "-o", str(tmp_path / "fresh"))
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "fresh" / "report.json").read_text())["start"] == "scratch"


def test_interrupted_launch_resumes(config_file, tmp_path):
    run_dir = tmp_path / "interrupted"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    # Six generations: Ctrl-C after the first checkpoint must land while the search still runs.
    proc = subprocess.Popen([certevo_exe(), "launch", str(config_file), "--run-dir", str(run_dir),
                             "--set", "search.generations=6"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            # A shell without job control starts background jobs with SIGINT
                            # ignored, and Python then never turns it into KeyboardInterrupt:
                            # give the launch Ctrl-C as a terminal would.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not (run_dir / "checkpoint" / "state.json").is_file():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "certevo resume" in err
    assert not (run_dir / "front.json").exists()  # it stopped before the end
    out = run("resume", str(run_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "front.json").read_text())["generations"] == 6
    out = run("resume", str(run_dir), "--generations", "7")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run_dir / "front.json").read_text())["generations"] == 7


def test_tune_runs_two_trials_then_resumes_to_a_third(config_file, tmp_path):
    run_dir = tmp_path / "tune"
    out = run("tune", str(config_file), "--trials", "2", "--budget", "6", "--run-dir", str(run_dir),
              "--set", "genome.sparsities=[0.5]")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / "optuna.journal").is_file()
    out = run("tune", "--trials", "3", "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    import optuna

    from certevo.search.tune import STUDY_NAME, storage

    study = optuna.load_study(study_name=STUDY_NAME, storage=storage(run_dir))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    from certevo.population.selection import hypervolume_2d

    for trial in complete:  # its value is the hypervolume its own search reached at the budget
        front = json.loads((Path(trial.user_attrs["run_dir"]) / "front.json").read_text())
        assert front["evaluations"] == 6
        points = [(r["sparsity"], r["certified_accuracy"]) for r in front["front"]]
        assert trial.value == pytest.approx(hypervolume_2d(points), rel=1e-12) and trial.value > 0
    best = json.loads((run_dir / "best.json").read_text())
    assert best["trials"] == 3
    values = {t.number: t.value for t in complete}
    assert best["hypervolume"] == values[best["best_trial"]] == max(values.values())


def test_bad_arguments_and_directories_fail_clearly(launched, config_file, tmp_path):
    out = run("launch", str(config_file), "--run-dir", str(launched))
    assert out.returncode != 0 and "already holds a search" in out.stderr and "certevo resume" in out.stderr
    out = run("launch", "--set", "search.population_size=1", "--run-dir", str(tmp_path / "x"))
    assert out.returncode != 0 and "search.population_size" in out.stderr and "Traceback" not in out.stderr
    out = run("inspect", str(tmp_path / "missing"))
    assert out.returncode != 0 and "does not exist" in out.stderr
    out = run("resume", str(tmp_path))
    assert out.returncode != 0 and "not a certevo run directory" in out.stderr
    out = run("export", str(launched), "--min-sparsity", "0.999", "-o", str(tmp_path / "e"))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    out = run("export", str(launched), "-o", str(tmp_path / "e"))
    assert out.returncode != 0  # one of --id / --min-sparsity / --knee is required


@pytest.mark.parametrize("command", ["launch", "resume", "inspect", "export", "train", "tune", "evaluate"])
def test_every_command_has_help(command):
    out = run(command, "--help", timeout=60)
    assert out.returncode == 0 and "usage: certevo " + command in out.stdout
