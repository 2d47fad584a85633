"""How values become MLflow params, tags and keys: MLflow's limits, valid keys, text cut to
fit, and a configuration flattened with dots."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

# MLflow's limits (mlflow.utils.validation), repeated here so this module imports no mlflow
# until it needs it.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_PARAMS_TAGS_PER_BATCH = 100


def _key(name: str) -> str:
    """An MLflow-valid param/metric/tag key (alphanumerics, _ - . / : space; <= 250 chars)."""
    return re.sub(r"[^/\w.\- :]", "_", str(name))[:MAX_KEY]


def _cut(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    marker = "...[cut]"
    return value[: limit - len(marker)] + marker


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return "None" if value is None else str(value)


def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"search": {"population_size": 12}}`` -> ``{"search.population_size": "12"}``:
    nested mappings joined with dots, lists as JSON text, values cut to MLflow's limit."""
    out: dict[str, str] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, key + "."))
        else:
            out[_key(key)] = _cut(_text(value), MAX_PARAM_VALUE)
    return out

