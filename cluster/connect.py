"""Connecting to Ray: a local session on a laptop, or an existing cluster."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import ray

from population.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("population", "evaluators", "cluster", "search")


def _runtime_env() -> dict[str, Any]:
    # Ship the project's own packages so cluster workers need only the dependencies.
    return {"py_modules": [str(PROJECT_ROOT / name) for name in PACKAGES]}


def connect(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False) -> dict[str, Any]:
    """Start a local Ray (``address`` None) or join a cluster (``auto``, ``HOST:PORT`` or
    ``ray://HOST:PORT``); reuse an existing connection. Returns the cluster resources."""
    if ray.is_initialized():
        return ray.cluster_resources()
    kwargs: dict[str, Any] = {
        "ignore_reinit_error": True,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
    }
    if address is None:
        kwargs.update(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    else:
        kwargs.update(address=address, runtime_env=_runtime_env())
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"cluster.address {address!r}: cannot connect to Ray ({exc}); check that the cluster is up "
            "(`ray status`), or leave the address out to start a local Ray"
        ) from exc
    return ray.cluster_resources()
