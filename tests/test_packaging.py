"""certevo installs as one package: a built wheel holds ``certevo/`` and nothing else at
top level, and it works from a fresh virtual environment outside the repository."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("population", "evaluators", "cluster", "search")
MAX_MODULE_LINES = 500


def _tracked_files() -> list[Path]:
    """The repository's files as a fresh clone has them (git's list; the tree without
    .venv, runs and caches when git is not there)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30)
        return [Path(p) for p in out.stdout.decode().split("\0") if p and (ROOT / p).exists()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".venv", "runs", ".git", "__pycache__", "build", "dist", ".pytest_cache", ".hypothesis"}
        return [p.relative_to(ROOT) for p in ROOT.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def _package_modules() -> list[Path]:
    return sorted(p for p in _tracked_files()
                  if p.suffix == ".py" and (p.parts[0] in SUBPACKAGES or p.parts[0] == "certevo"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """certevo's wheel, built (as ``pip install .`` builds it) from a copy of the files a
    fresh clone has, so nothing untracked can make it pass."""
    source = tmp_path_factory.mktemp("source")
    for rel in _tracked_files():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, source / rel)
    return _build_wheel(source, tmp_path_factory.mktemp("wheel"))


def _build_wheel(source: Path, out_dir: Path) -> Path:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out_dir), str(source)],
        capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (path,) = out_dir.glob("certevo-*.whl")
    return path


def _missing_modules(wheel: Path) -> list[str]:
    names = set(zipfile.ZipFile(wheel).namelist())
    inside = (m.as_posix() if m.parts[0] == "certevo" else f"certevo/{m.as_posix()}" for m in _package_modules())
    return [name for name in inside if name not in names]


def test_the_wheel_installs_one_top_level_package_holding_every_module(wheel):
    assert _missing_modules(wheel) == [], "add their packages to pyproject.toml"
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"certevo", wheel.name.removesuffix("-py3-none-any.whl") + ".dist-info"}, tops
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "certevo = certevo.search.cli:main" in entry_points


def test_a_fresh_venv_with_the_wheel_imports_certevo_and_nothing_generic(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    script = (
        "import importlib.util, certevo\n"
        "print(certevo.__version__)\n"
        "print(sorted(n for n in ('search', 'population', 'evaluators', 'cluster') if importlib.util.find_spec(n)))\n"
        "print(certevo.__file__)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([str(python), "-c", script], cwd=outside, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    version, generic, location = out.stdout.strip().splitlines()
    assert version == wheel.name.split("-")[1]
    assert generic == "[]"  # no search/population/evaluators/cluster at top level
    assert Path(location).is_relative_to(env_dir), location
    shown = subprocess.run([str(env_dir / "bin" / "certevo"), "--version"], cwd=outside, capture_output=True,
                           text=True, env=env, timeout=60)
    assert shown.returncode == 0 and shown.stdout.strip() == f"certevo {version}", shown.stdout + shown.stderr


def test_the_whole_public_api_resolves():
    import certevo

    assert set(certevo.__all__) >= {"__version__", "Search", "load_config", "MlflowTracker", "read_export",
                                    "build_exported_model", "apply_mask_to_model", "CertevoError"}
    for name in certevo.__all__:
        assert getattr(certevo, name) is not None, name
    assert issubclass(certevo.ConfigError, certevo.CertevoError)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        certevo.nonsense  # noqa: B018


def test_version_flag_prints_the_package_version_without_importing_torch():
    script = ("import sys, certevo\n"
              "from certevo.search.cli import main\n"
              "for argv in (['--version'], ['--help']):\n"
              "    try:\n"
              "        main(argv)\n"
              "    except SystemExit as stop:\n"
              "        assert stop.code == 0, stop.code\n"
              "print('torch' in sys.modules, 'ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    import certevo

    assert out.stdout.splitlines()[0] == f"certevo {certevo.__version__}"
    assert out.stdout.splitlines()[-1] == "False False"


def _imports_of_generic_names(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [f"{path}:{node.lineno}: {name}" for name in names if name.split(".")[0] in SUBPACKAGES]
    return found


def test_code_imports_the_packages_by_their_certevo_names():
    # ``import search`` works inside a checkout (its root is on sys.path) but not from a wheel.
    offenders = [hit for p in _tracked_files() if p.suffix == ".py" for hit in _imports_of_generic_names(ROOT / p)]
    assert offenders == []



def test_no_module_of_the_package_is_over_the_size_limit():
    too_long = {str(p): n for p in _package_modules() if (n := len((ROOT / p).read_text().splitlines())) > MAX_MODULE_LINES}
    assert too_long == {}, f"split these modules (at most {MAX_MODULE_LINES} lines each): {too_long}"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_the_cluster_images_copy_everything_pip_needs(dockerfile, tmp_path):
    """What the image's COPY lines put in its build directory (cluster/configs/Dockerfile*)
    builds the whole package, as the image's ``pip install .`` does."""
    context = tmp_path / "image"
    context.mkdir()
    lines = (ROOT / "cluster" / "configs" / dockerfile).read_text().splitlines()
    copies = [[word for word in line.split()[1:] if not word.startswith("--")] for line in lines if line.startswith("COPY ")]
    assert copies, dockerfile
    for *sources, destination in copies:
        for source in sources:
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, context / destination, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(ROOT / source, context / destination)
    assert _missing_modules(_build_wheel(context, tmp_path / "wheel")) == []
