"""Exception types shared by every certevo package."""

from __future__ import annotations


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
