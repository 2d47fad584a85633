"""certevo.search.run_frames: a real run directory read into pandas in a notebook, without torch or Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from certevo.population.errors import CheckpointError
from certevo.search.loop import Search
from certevo.search.run_directory import open_run
from conftest import tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(ray_session, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("frames") / "run"
    Search.create(tiny("search.generations=2"), path).run()
    return path


def test_frames_hold_every_candidate_the_front_and_the_history(run_dir):
    from certevo.search.run_frames import load_frames

    frames = load_frames(run_dir)
    state = open_run(run_dir).state  # the search's own reader, as the reference
    archive = frames.archive.set_index("id")
    assert set(archive.index) == set(state.archive) and len(archive) == len(state.archive)
    for cid, candidate in state.archive.items():
        row, record = archive.loc[cid], state.lineage.get(cid)
        assert row["sparsity"] == pytest.approx(candidate.record.sparsity)
        assert row["certified_accuracy"] == pytest.approx(candidate.record.certified_accuracy)
        assert row["clean_accuracy"] == pytest.approx(candidate.record.clean_accuracy)
        assert row["generation"] == record.generation and row["operator"] == record.operator
        assert list(row["parents"]) == list(record.parent_ids)
        assert row["epochs"] == candidate.record.epochs
        assert row["activations"] == ",".join(candidate.genome.activation_pattern())
        for layer, value in candidate.record.layer_sparsity.items():
            assert row[f"layer_sparsity.{layer}"] == pytest.approx(value)
    assert archive["checkpointed"].all()
    assert set(archive.index[archive["in_population"]]) == set(state.population)
    assert set(frames.front["id"]) == {c.id for c in state.front()}
    assert list(frames.front["sparsity"]) == sorted(frames.front["sparsity"])
    assert list(frames.history["generation"]) == [0, 1, 2]
    assert list(frames.history["hypervolume"]) == pytest.approx([h["hypervolume"] for h in state.history])
    assert "best_certified_at_0.9" in frames.history.columns
    assert frames.config["search"]["generations"] == 2


def test_loading_frames_imports_neither_torch_nor_ray(run_dir):
    code = ("import json, sys\n"
            "from certevo.search.run_frames import load_frames\n"
            f"frames = load_frames({str(run_dir)!r})\n"
            "print(json.dumps({'rows': len(frames.archive), 'front': len(frames.front),\n"
            "                  'loaded': sorted(m for m in ('torch', 'ray', 'mlflow', 'matplotlib') if m in sys.modules)}))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["rows"] > 0 and result["front"] > 0


def test_a_directory_that_is_not_a_run_is_refused_clearly(tmp_path):
    from certevo.search.run_frames import load_frames

    with pytest.raises(CheckpointError, match=f"{tmp_path} is not a certevo run directory"):
        load_frames(tmp_path)
