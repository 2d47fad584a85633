"""Exception types shared by every certevo package, and :func:`reject` /
:func:`check_choice`, which raise the ConfigError of a setting that breaks a rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn


class CertevoError(Exception):
    """Base class of every error certevo raises on purpose.

    Messages state the rule that was broken, the value received and how to fix it.
    """


class ConfigError(CertevoError, ValueError):
    """A setting or argument has a value certevo cannot use."""


class DataError(CertevoError, ValueError):
    """A data set file or directory cannot be read or fails a sanity check."""


class GenomeError(CertevoError, ValueError):
    """A genome does not fit the model template or the genome space."""


class CheckpointError(CertevoError):
    """A checkpoint or export file is missing, damaged or from something else."""


def reject(field: str, value: Any, rule: str, fix: str) -> NoReturn:
    """Raise ConfigError("<field> <rule>; got <value!r>; <fix>"): the setting ``field``
    breaks ``rule`` with ``value``, and ``fix`` says what to write instead."""
    raise ConfigError(f"{field} {rule}; got {value!r}; {fix}")


def check_choice(field: str, value: Any, choices: Sequence[str], what: str) -> None:
    """:func:`reject` ``value`` unless it is one of ``choices`` (``what`` names what one is)."""
    if not isinstance(value, str) or value not in choices:
        reject(field, value, f"is not {what}", f"use one of {', '.join(choices)}")
