"""certevo.search.run_directory: a real finished run read back (config, checkpointed state,
journal), clear refusals of what is not a run, and the commands that only read a run
(`certevo inspect` in all its forms, `certevo --help`) starting without torch or Ray."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from certevo.population.errors import CheckpointError, ConfigError
from certevo.search.loop import Search
from conftest import tiny

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("search.generations=1",)

# Runs certevo's command line in a fresh interpreter, then reports which heavy modules it loaded.
PROBE = """
import json, sys
from certevo.search.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help
    code = exc.code
print(json.dumps({"code": code, "loaded": sorted(m for m in ("torch", "ray") if m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def finished(ray_session, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run_directory") / "run"
    Search.create(tiny(*SETTINGS), run_dir).run()
    return run_dir


def certevo_in_fresh_python(*args: str) -> tuple[dict, str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    *printed, report = out.stdout.strip().splitlines()
    return json.loads(report), "\n".join(printed)


def test_inspect_table_json_and_lineage_start_without_torch_or_ray(finished):
    report, printed = certevo_in_fresh_python("inspect", str(finished))
    assert report == {"code": 0, "loaded": []}
    assert "Pareto front" in printed and "population (sorted by sparsity)" in printed
    report, printed = certevo_in_fresh_python("inspect", str(finished), "--json")
    assert report == {"code": 0, "loaded": []}
    info = json.loads(printed)
    assert info["generation"] == 1 and info["front"]
    child = next(r["id"] for r in info["population"] + info["front"] if r["parents"])
    report, printed = certevo_in_fresh_python("inspect", str(finished), "--json", "--lineage", child[:10])
    assert report == {"code": 0, "loaded": []}
    assert json.loads(printed)["lineage"]["id"] == child
    report, printed = certevo_in_fresh_python("inspect", str(finished), "--lineage", child)
    assert report == {"code": 0, "loaded": []} and child in printed


def test_inspect_plot_draws_with_matplotlib_but_without_torch_or_ray(finished, tmp_path):
    report, _ = certevo_in_fresh_python("inspect", str(finished), "--plot", str(tmp_path / "front.png"))
    assert report == {"code": 0, "loaded": []}
    assert (tmp_path / "front.png").stat().st_size > 0 and (tmp_path / "front-history.png").stat().st_size > 0


def test_help_starts_without_torch_or_ray():
    report, printed = certevo_in_fresh_python("--help")
    assert report == {"code": 0, "loaded": []}
    assert "inspect" in printed and "launch" in printed


def test_export_starts_without_ray(finished, tmp_path):
    report, printed = certevo_in_fresh_python("export", str(finished), "--knee", "-o", str(tmp_path / "best"))
    assert report["code"] == 0 and "ray" not in report["loaded"]
    assert (tmp_path / "best.json").is_file() and "exported candidate" in printed


def test_open_run_gives_the_config_the_checkpoint_and_every_journaled_record(finished):
    from certevo.search.run_directory import RunDirectory, open_run

    run = open_run(finished)
    assert run.directory == RunDirectory(finished)
    assert run.config.digest() == tiny(*SETTINGS).digest()  # the digest leaves out run_dir
    assert run.state.generation == 1 and run.state.front()
    records = run.journal_records()
    assert set(records) == set(run.state.archive)
    for cid, candidate in run.state.archive.items():
        assert records[cid].certified_accuracy == candidate.record.certified_accuracy
        assert records[cid].sparsity == candidate.record.sparsity
    front = json.loads(RunDirectory(finished).front.read_text())
    assert sorted(r["id"] for r in front["front"]) == sorted(c.id for c in run.state.front())


def test_what_is_not_a_run_is_refused_with_what_to_do(finished, tmp_path):
    from certevo.search.run_directory import RunDirectory, open_run

    with pytest.raises(ConfigError, match=f"run directory {tmp_path / 'nope'} does not exist; pass the directory"):
        open_run(tmp_path / "nope")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory; pass the directory `certevo launch` created"):
        open_run(tmp_path / "afile")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"is not a certevo run directory \(no config.yaml\)"):
        open_run(empty)
    RunDirectory(empty).config.write_text(yaml.safe_dump(tiny(*SETTINGS).to_dict()))
    with pytest.raises(CheckpointError, match=r"has no checkpoint yet .* resume it with `.*resume"):
        open_run(empty)
    started = open_run(empty, require_checkpoint=False)  # what a resume starts over from
    assert started.state is None and started.config.digest() == tiny(*SETTINGS).digest()
    edited = tmp_path / "edited"
    shutil.copytree(finished, edited)
    config = yaml.safe_load(RunDirectory(edited).config.read_text())
    config["training"]["epochs"] = 7
    RunDirectory(edited).config.write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError, match=r"differs from the configuration the checkpoint was made with "
                                              r"\(changed: training.epochs\)"):
        open_run(edited)
