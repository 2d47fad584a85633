"""The first hour, as a new user meets it: `make run` calls .venv/bin/certevo, which is not
on PATH; the search's output goes to a log file; the certified accuracy has to say what it
refers to. One real launch (stderr into a file, PATH without the venv) serves every test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from certevo.search.command_hint import certevo_program, command_hint
from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CERTEVO = VENV_BIN / "certevo"
#: 300 digits, 20 % of them for validation; eps from the tiny config; CROWN is the default method
CAPTION = "certified accuracy: digits, 60 validation samples, eps 0.05 (L-inf), CROWN"


def new_shell_env() -> dict[str, str]:
    """A new shell after `make run`: the venv's bin directory is not on PATH."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != VENV_BIN.resolve())
    return dict(os.environ, PATH=path or os.defpath, RAY_USAGE_STATS_ENABLED="0", COLUMNS="200")


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """`certevo launch` as `make run` starts it, with stderr going to a log file (as under
    nohup or `ray job submit`); the log is read while the search runs."""
    if not CERTEVO.is_file():
        pytest.skip(f"the certevo console script is not installed next to {sys.executable}; run `make test`")
    home = tmp_path_factory.mktemp("first-hour")
    (home / "tiny.yaml").write_text(yaml.safe_dump(tiny_config("search.generations=2")))
    log_path = home / "search.log"
    env = new_shell_env()
    assert subprocess.run(["bash", "-c", "command -v certevo"], env=env, capture_output=True).returncode != 0, \
        "certevo is on PATH outside the venv; this test needs a PATH without it"
    with log_path.open("w") as log:
        proc = subprocess.Popen([os.path.relpath(CERTEVO, home), "launch", "tiny.yaml", "--run-dir", "run"],
                                cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        first_line_at, running_then, log_then = None, None, ""
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            text = log_path.read_text()
            if first_line_at is None and re.search(r"^gen 0/2 ", text, re.M):
                first_line_at, log_then = time.monotonic(), text
                running_then = proc.poll() is None
            time.sleep(0.05)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    output = log_path.read_text()
    assert proc.returncode == 0, output[-3000:]
    return {"home": home, "env": env, "output": output, "log_then": log_then, "running_then": running_then}


def next_lines(output: str) -> list[str]:
    return [line[len("next: "):] for line in output.splitlines() if line.startswith("next: ")]


def run_in_new_shell(line: str, launch) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], cwd=launch["home"], env=launch["env"], capture_output=True,
                          text=True, timeout=300)


# -- the commands it prints run as shown ----------------------------------------------------
def test_every_next_line_runs_as_shown_in_a_new_shell(launch):
    lines = next_lines(launch["output"])
    assert len(lines) == 3, launch["output"][-2000:]
    for line in lines:  # the venv's certevo, by a path that works from here (not the bare name)
        assert Path(launch["home"], shlex.split(line)[0]).resolve() == CERTEVO.resolve(), line
    inspect_line = next(line for line in lines if " inspect " in line)
    shown = run_in_new_shell(inspect_line, launch)
    assert shown.returncode == 0, shown.stderr
    assert "Pareto front" in shown.stdout
    assert CAPTION in shown.stdout  # and it says what its certified accuracies refer to
    export_line = next(line for line in lines if " export " in line)
    exported = run_in_new_shell(export_line, launch)
    assert exported.returncode == 0, exported.stderr
    assert (launch["home"] / "best.json").is_file()
    train_hint = exported.stdout.splitlines()[-1]
    assert train_hint.startswith("next: ") and shlex.split(train_hint[6:])[0] == shlex.split(export_line)[0]
    resume_line = next(line for line in lines if " resume " in line)  # the same program: the shell finds it
    assert run_in_new_shell(f"command -v {resume_line.split(' resume ')[0]}", launch).returncode == 0


def test_the_mlflow_hint_runs_as_shown(launch):
    line = next(line for line in launch["output"].splitlines() if "view it: " in line).split("view it: ", 1)[1]
    program = shlex.split(line)[0]
    assert Path(launch["home"], program).resolve() == (VENV_BIN / "mlflow").resolve() or program == "mlflow"
    assert run_in_new_shell(f"command -v {shlex.quote(program)}", launch).returncode == 0


def test_the_program_is_named_by_the_shortest_path_that_works(tmp_path):
    no_venv = new_shell_env()["PATH"]
    if CERTEVO.parent.parent == ROOT / ".venv":  # `make run` in the repository
        assert certevo_program(argv0=str(CERTEVO), path=no_venv, cwd=ROOT) == ".venv/bin/certevo"
    # from far away the absolute path is shorter than ../../..
    deep = tmp_path / "a" / "b" / "c" / "d" / "e" / "f"
    deep.mkdir(parents=True)
    far = certevo_program(argv0=str(CERTEVO), path=no_venv, cwd=deep)
    assert far == shlex.quote(str(CERTEVO)) or len(far) < len(str(CERTEVO))
    assert Path(deep, shlex.split(far)[0]).resolve() == CERTEVO.resolve()
    # on PATH (an activated venv): the bare name
    assert certevo_program(argv0=str(CERTEVO), path=f"{VENV_BIN}{os.pathsep}{no_venv}", cwd=deep) == "certevo"
    # another certevo first on PATH is not this one: name this one
    other = tmp_path / "other-bin"
    other.mkdir()
    (other / "certevo").write_text("#!/bin/sh\necho another certevo\n")
    (other / "certevo").chmod(0o755)
    assert certevo_program(argv0=str(CERTEVO), path=f"{other}{os.pathsep}{VENV_BIN}", cwd=deep) != "certevo"
    # run directories with spaces are quoted
    assert command_hint("resume", "my runs/a", argv0=str(CERTEVO), path=str(VENV_BIN)) == "certevo resume 'my runs/a'"


def test_an_existing_run_directory_suggests_a_resume_that_runs(launch, monkeypatch):
    from certevo.population.errors import ConfigError
    from certevo.search.config import load_config
    from certevo.search.loop import Search

    monkeypatch.chdir(launch["home"])
    monkeypatch.setenv("PATH", launch["env"]["PATH"])  # a new shell: the venv is not on PATH
    with pytest.raises(ConfigError, match="already holds a search") as error:
        Search.create(load_config(launch["home"] / "tiny.yaml"), "run")
    hint = re.search(r"resume it with `([^`]+)`", str(error.value)).group(1)
    assert shlex.split(hint)[1:] == ["resume", "run"]
    assert Path(launch["home"], shlex.split(hint)[0]).resolve() == CERTEVO.resolve(), hint


# -- progress in a log file ---------------------------------------------------------------------
def test_a_log_file_shows_a_line_per_generation_while_the_search_runs(launch):
    assert launch["running_then"] is True, "the first progress line came only after the search ended"
    assert "Pareto front after" not in launch["log_then"]  # it was there before the end
    lines = [line for line in launch["output"].splitlines() if line.startswith("gen ")]
    assert [line.split()[1] for line in lines] == ["0/2", "1/2", "2/2"]
    assert all(re.search(r"\d+/\d+ evaluations .* eval/min  HV \d\.\d{3} .* eta \d+:\d\d:\d\d$", line) for line in lines)


# -- what a certified accuracy refers to ------------------------------------------------------
def test_the_final_screen_names_data_samples_eps_and_method(launch):
    assert CAPTION in launch["output"]


def test_inspect_json_and_plot_name_data_samples_eps_and_method(launch, tmp_path):
    program = os.path.relpath(CERTEVO, launch["home"])
    shown = run_in_new_shell(f"{program} inspect run --json --plot {tmp_path / 'front.png'}", launch)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["certified_accuracy_refers_to"] == {
        "data_set": "digits", "split": "validation", "samples": 60, "eps": 0.05, "norm": "L-inf", "method": "CROWN"}
    assert CAPTION in Image.open(tmp_path / "front.png").text["Title"]
    assert CAPTION in Image.open(tmp_path / "front-history.png").text["Title"]


def test_the_pictures_name_data_samples_eps_and_method(launch):
    artifacts = launch["home"] / "run" / "artifacts"
    pictures = [artifacts / "front.png", artifacts / "history.png", artifacts / "lineage.png",
                *sorted((artifacts / "fronts").glob("front_gen_*.png"))]
    assert len(pictures) == 6
    for png in pictures:
        assert CAPTION in Image.open(png).text.get("Title", ""), png
