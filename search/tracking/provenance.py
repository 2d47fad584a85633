"""Where the code of a search came from: the git commit of the source checkout and
certevo's version (tags of the parent run)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # a source checkout's root (it holds certevo/ and search/)


def git_commit(root: str | Path = PROJECT_ROOT) -> str | None:
    """The commit checked out in ``root`` (read from ``.git``; ``git rev-parse HEAD`` only if
    that fails), or None when unknown."""
    root = Path(root)
    dot_git = root / ".git"
    if not dot_git.exists():
        return None
    try:
        git_dir = dot_git
        if dot_git.is_file():  # worktree or submodule: "gitdir: <path>"
            text = dot_git.read_text().strip()
            if text.startswith("gitdir:"):
                git_dir = (root / text[len("gitdir:"):].strip()).resolve()
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head if re.fullmatch(r"[0-9a-f]{40,64}", head) else None
        ref = head[len("ref:"):].strip()
        for base in (git_dir, common):
            if (base / ref).is_file():
                sha = (base / ref).read_text().strip()
                if re.fullmatch(r"[0-9a-f]{40,64}", sha):
                    return sha
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
        return None  # a branch without commits
    except OSError:
        pass
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        sha = done.stdout.strip()
        return sha if done.returncode == 0 and sha else None
    except (OSError, subprocess.SubprocessError):
        return None


def _version() -> str:
    from certevo import __version__

    return __version__
