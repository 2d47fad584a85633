"""Without auto_LiRPA installed, the user is told how to install it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_missing_auto_lirpa_says_how_to_install_it():
    script = (
        "import sys\n"
        "sys.modules['auto_LiRPA'] = None  # as if it were not installed\n"
        "from certevo.evaluators.lirpa_compat import auto_lirpa, AutoLirpaMissing\n"
        "try:\n"
        "    auto_lirpa()\n"
        "except AutoLirpaMissing as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert "pip install --no-deps auto-lirpa==0.3" in out.stdout


def test_cli_reports_missing_auto_lirpa_without_a_traceback():
    script = (
        "import sys\n"
        "sys.modules['auto_LiRPA'] = None\n"
        "from certevo.search.cli import main\n"
        "sys.exit(main(['evaluate', '--subset', '100', '--epochs', '1', '--no-pgd']))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "auto-lirpa==0.3" in out.stderr
    assert "Traceback" not in out.stderr
