"""Checks every certevo JSON manifest shares: its ``format`` name, its ``format_version``
and the sha256 of the file it describes.

Checkpoints, lineage data, exports and final-training reports use them. Each check raises
:class:`CheckpointError` with the caller's message, built from what was found, because
what to do about a wrong file depends on which file it is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from certevo.population.errors import CheckpointError

__all__ = ["check_format", "check_sha256", "check_version", "read_json", "sha256_hex"]


def sha256_hex(blob: bytes) -> str:
    """The sha256 of ``blob``, as hex digits."""
    return hashlib.sha256(blob).hexdigest()


def read_json(path: Path, damaged: Callable[[Exception], str]) -> Any:
    """The JSON data in the file at ``path``; CheckpointError(``damaged(exc)``) when it is
    not valid JSON text."""
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(damaged(exc)) from exc


def check_format(data: Any, expected: str, wrong: Callable[[Any], str]) -> None:
    """Nothing, when ``data`` is a JSON object whose ``format`` is ``expected``; otherwise
    CheckpointError(``wrong(found)``), ``found`` being the format it names (the type's
    name when it is not an object)."""
    if isinstance(data, Mapping) and data.get("format") == expected:
        return
    raise CheckpointError(wrong(data.get("format") if isinstance(data, Mapping) else type(data).__name__))


def check_version(data: Mapping[str, Any], readable: Collection[int], wrong: Callable[[Any], str]) -> int:
    """``data``'s ``format_version``, when it is one of ``readable``; otherwise
    CheckpointError(``wrong(found)``). A JSON ``true`` is not version 1."""
    version = data.get("format_version")
    if isinstance(version, bool) or version not in readable:
        raise CheckpointError(wrong(version))
    return version


def check_sha256(blob: bytes, recorded: Any, wrong: Callable[[str], str]) -> None:
    """Nothing, when ``blob``'s sha256 is the ``recorded`` one; otherwise
    CheckpointError(``wrong(actual)``)."""
    actual = sha256_hex(blob)
    if actual != recorded:
        raise CheckpointError(wrong(actual))
