"""What a run's certified accuracy refers to: data set, validation samples, eps, method.

A certified accuracy means little without them (60 % on 360 digits at eps 0.1 is not 60 %
on 10 000 MNIST images at eps 0.3), so the final screen, ``certevo inspect`` and the
pictures carry this caption, taken from the run's config and its fitness records.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath
from typing import Any

from certevo.evaluators.fitness import FitnessRecord
from certevo.search.config import SearchConfig

METHOD_NAMES = {"ibp": "IBP", "crown": "CROWN", "crown-optimized": "alpha-CROWN"}


def certification_context(config: SearchConfig, records: Iterable[FitnessRecord]) -> dict[str, Any]:
    """The facts behind a certified accuracy of this run, as plain data: data set name,
    validation samples certified (from the successful records; None before any), eps and
    its norm, and the certification method."""
    data = config.data.name
    if data == "npz" and config.data.path:
        data = f"npz {PurePath(str(config.data.path)).name}"
    samples = sorted({int(r.samples) for r in records if r.ok and r.samples})
    cert = config.certification
    method = METHOD_NAMES.get(cert.method, cert.method)  # (IBP first where set: sound, so the union counts)
    return {
        "data_set": data,
        "split": "validation",
        "samples": samples[0] if len(samples) == 1 else (samples or None),
        "eps": cert.eps,
        "norm": "L-inf",
        "method": method,
    }


def caption_text(context: dict[str, Any]) -> str:
    """One line, e.g. ``certified accuracy: digits, 360 validation samples, eps 0.1
    (L-inf), CROWN``."""
    samples = context.get("samples")
    if isinstance(samples, int):
        where = f"{samples} {context['split']} samples"
    elif samples:
        where = f"{min(samples)} to {max(samples)} {context['split']} samples"
    else:
        where = f"the {context['split']} split"
    return (f"certified accuracy: {context['data_set']}, {where}, eps {context['eps']:g} ({context['norm']}), "
            f"{context['method']}")


def certified_caption(config: SearchConfig, records: Iterable[FitnessRecord]) -> str:
    """:func:`caption_text` of :func:`certification_context`."""
    return caption_text(certification_context(config, records))


def search_caption(search: Any) -> str:
    """The caption of a running or finished :class:`certevo.search.loop.Search` (or of anything
    with its ``config`` and ``state``; a state without an archive has no records yet)."""
    archive = getattr(search.state, "archive", None) or {}
    return certified_caption(search.config, (c.record for c in archive.values()))


__all__ = ["caption_text", "certification_context", "certified_caption", "search_caption"]
