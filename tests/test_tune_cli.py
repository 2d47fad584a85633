"""`certevo tune` as a new user meets it: a line per finished trial while it runs (in a
pipe, not a terminal), and a `certevo launch` line that works as printed."""

from __future__ import annotations

import json
import re
import shlex

import yaml

from certevo.search.config import load_config
from conftest import tiny_config
from tests.test_cli import run


def setting(config, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def test_tune_prints_progress_per_trial_and_a_launch_line_that_works(tmp_path):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config("search.generations=2")))
    run_dir = tmp_path / "tune"
    out = run("tune", str(config_file), "--trials", "2", "--budget", "6", "--run-dir", str(run_dir),
              "--set", "genome.sparsities=[0.5]")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()

    # one line per finished trial, written as it finishes (stdout is a pipe here, not a tty)
    progress = [line for line in lines if line.startswith("trial ")]
    pattern = r"trial {}/2 \(#\d+\): hypervolume \d\.\d{{4}} \| best \d\.\d{{4}} \(#\d+\) \| \d+ s, \d+:\d\d elapsed"
    assert len(progress) == 2, out.stdout
    for n, line in enumerate(progress, start=1):
        assert re.fullmatch(pattern.format(n), line), line
    best_values = [float(re.search(r"best (\d\.\d{4})", line).group(1)) for line in progress]
    assert best_values[1] >= best_values[0]  # the best so far never gets worse

    # the printed launch line, taken as a user would copy it
    command = next(line.strip() for line in lines if line.strip().startswith("certevo launch"))
    words = shlex.split(command)
    assert words[:2] == ["certevo", "launch"]
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    assert len(overrides) * 2 == len(words) - 2  # nothing but --set KEY=VALUE pairs
    config = load_config(None, overrides)  # what `certevo launch` does with them: it must accept them

    best = json.loads((run_dir / "best.json").read_text())
    assert best["params"]
    for name, value in best["params"].items():  # Optuna's names: training.*, else a search.* setting
        key = name if name.startswith("training.") else f"search.{name}"
        assert setting(config, key) == value, name
    # the tuning's own base settings come along, so the launch searches the same problem
    assert config.genome.sparsities == (0.5,)
    assert config.model.widths == (16, 16)
    assert config.data.subset == 300
    assert best["launch"] == command
