"""What can go wrong with an MLflow call, and whether retrying it can help: a transient
failure (server down or overloaded) is retried, a call MLflow rejected is dropped and
reported."""

from __future__ import annotations

_TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED",
                    "ABORTED", "UNAVAILABLE"}


class TrackingWarning(UserWarning):
    """Something about MLflow tracking the user should know; the search itself is fine."""


class _NotReady(Exception):
    """The parent run does not exist yet (its creation is still queued)."""


class _NoRun(Exception):
    """The parent run could not be created, so nothing else can be logged to it."""



def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}"


def _is_transient(exc: BaseException) -> bool:
    """True for failures that may go away (server down or overloaded), False for calls
    MLflow rejected (retrying them would fail the same way)."""
    if isinstance(exc, _NotReady):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import requests

        if isinstance(exc, requests.exceptions.HTTPError):
            status = exc.response.status_code if exc.response is not None else 500
            return status >= 500 or status == 429
        if isinstance(exc, requests.exceptions.RequestException):
            return True
    except ImportError:  # pragma: no cover - mlflow depends on requests
        pass
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, MlflowException):
        return exc.error_code in _TRANSIENT_CODES
    return False


def _is_missing(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"
