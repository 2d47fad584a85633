"""The MLflow HTTP client's environment variables, set while a search logs to a tracking
server and restored afterwards (why: see "Fast failure against a tracking server" in the
package docstring)."""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV_MAX_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
ENV_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
DEFAULT_HTTP_RETRIES = 0
DEFAULT_HTTP_TIMEOUT = 5
ENV_NO_URL = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))



class _EnvOverride:
    """Set some environment variables now, put the previous values back later."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.saved: dict[str, str | None] | None = None

    def apply(self) -> None:
        if self.saved is None and self.values:
            self.saved = {name: os.environ.get(name) for name in self.values}
            os.environ.update(self.values)

    def restore(self) -> None:
        if self.saved is None:
            return
        for name, old in self.saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        self.saved = None
