"""Connecting to Ray: a local session on a laptop, or an existing cluster."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import ray

from certevo.population.errors import ConfigError

SUBPACKAGES = ("population", "evaluators", "cluster", "search")
_NOT_SHIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", "configs")


@contextmanager
def _runtime_env() -> Iterator[dict[str, Any]]:
    """Ray's ``runtime_env`` that ships this certevo to a cluster's workers, so they need
    only the dependencies (``py_modules`` unpacks a folder ``certevo/`` onto their path).

    An installed certevo is that folder already. In a source checkout the subpackages are
    folders beside ``certevo/``; they are copied into one temporary ``certevo/`` that
    exists until Ray has uploaded it (during ``ray.init``)."""
    import certevo

    package = Path(certevo.__file__).resolve().parent
    if all((package / name / "__init__.py").is_file() for name in SUBPACKAGES):
        yield {"py_modules": [str(package)]}
        return
    with tempfile.TemporaryDirectory(prefix="certevo-py-modules-") as staging:
        shipped = Path(staging) / "certevo"
        shutil.copytree(package, shipped, ignore=_NOT_SHIPPED)
        for name in SUBPACKAGES:
            source = Path(importlib.import_module(f"certevo.{name}").__file__).resolve().parent
            shutil.copytree(source, shipped / name, ignore=_NOT_SHIPPED)
        yield {"py_modules": [str(shipped)]}


def connect(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = False) -> dict[str, Any]:
    """Start a local Ray (``address`` None) or join a cluster (``auto``, ``HOST:PORT`` or
    ``ray://HOST:PORT``); reuse an existing connection. Returns the cluster resources.

    With no address, ``RAY_ADDRESS`` (set e.g. inside ``ray job submit``) is honoured as
    Ray does; otherwise a new local Ray starts even when a ``ray start`` cluster runs on
    this machine (plain ``ray.init()`` would silently join the latest one). A local Ray
    listens on 127.0.0.1 only (see :func:`_loopback_only`)."""
    if ray.is_initialized():
        return ray.cluster_resources()
    kwargs: dict[str, Any] = {
        "ignore_reinit_error": True,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
    }
    if address is None and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    if address is None:
        kwargs.update(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    else:
        check_reachable(address)
    try:
        with _keep_sigterm_handler(), ExitStack() as scope:
            if address is not None:
                kwargs.update(runtime_env=scope.enter_context(_runtime_env()), address=address)
            if address is None or _is_loopback_only_ray(address):
                scope.enter_context(_loopback_only())
            ray.init(**kwargs)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError or its AuthenticationError
        if address is not None and _is_authentication_failure(exc):
            mode = os.environ.get("RAY_AUTH_MODE")
            raise ConfigError(
                f"cluster.address {address!r}: the Ray cluster uses token authentication and this client's token "
                f"is missing or wrong ({f'RAY_AUTH_MODE={mode}' if mode else 'RAY_AUTH_MODE is unset'} here). Fix: set "
                "RAY_AUTH_MODE=token and give certevo the cluster's token, either as RAY_AUTH_TOKEN=<token> or "
                "in a file named by RAY_AUTH_TOKEN_PATH (default ~/.ray/auth_token); "
                "`ray get-auth-token` on the head node prints it"
            ) from None
        if not isinstance(exc, (ConnectionError, RuntimeError, ValueError)):
            raise
        hint = ""
        if address is not None and address.startswith("ray://"):
            # Through the Ray Client a missing or wrong token looks like a timeout.
            hint = ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token and its token in "
                    "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")
        raise ConfigError(
            f"cluster.address {address!r}: cannot connect to Ray ({exc}); check that the cluster is up "
            f"(`ray status`), or leave the address out to start a local Ray{hint}"
        ) from exc
    return ray.cluster_resources()


def check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """Fail fast when nothing listens at a ``HOST:PORT`` (or ``ray://HOST:PORT``) address:
    ``ray.init`` would retry such an address for many minutes without a word."""
    import socket

    if address is None:
        return
    host, _, port_text = address.removeprefix("ray://").rpartition(":")
    if not host or not port_text.isdigit():
        return  # "auto" and other forms: Ray resolves them itself
    try:
        socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(
            f"cluster.address {address!r}: nothing answers at {host}:{port_text} ({exc.strerror or exc}); check "
            "that the cluster is up (`ray status` on its head node) and the address and port (the head's GCS "
            "port, 6379 by default, or 10001 for ray://), or leave the address out to start a local Ray"
        ) from None


@contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """Keep the application's own SIGTERM handler across ``ray.init``: Ray replaces it
    with ``sys.exit(15)``, which ends a search in an unclean interpreter exit (SIGABRT, a
    stack dump, no resume hint) instead of the stop the application set up (certevo's CLI
    stops on SIGTERM as on Ctrl-C). A default or ignored disposition is left to Ray."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if callable(before):
            signal.signal(signal.SIGTERM, before)


# Ray's switch for "no multi-node cluster on this machine" (meant for macOS/Windows): with
# it off, the node address is the loopback one and every Ray server binds 127.0.0.1.
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _loopback_only() -> Iterator[None]:
    """While a local Ray starts: its GCS, raylet, object manager, agents and workers listen on
    127.0.0.1 instead of every interface (Ray 2.x has no bind-address setting for them).
    The environment variable reaches the processes Ray spawns; the constant is what this
    process's Ray reads at start-up. Both are put back afterwards."""
    from ray._private import ray_constants

    before_env = os.environ.get(_SINGLE_MACHINE_ENV)
    before_flag = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    if before_flag is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if before_env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = before_env
        if before_flag is not None:
            ray_constants.ENABLE_RAY_CLUSTER = before_flag


def _is_loopback_only_ray(address: str) -> bool:
    """Whether ``address`` is a Ray on this machine that listens on 127.0.0.1 only (a local
    Ray certevo started): joining it needs the loopback mode too, or Ray would rewrite
    127.0.0.1 to this machine's public address and find nothing there."""
    import socket

    host, _, port_text = address.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port_text.isdigit():
        return False
    port = int(port_text)

    def accepts(ip: str) -> bool:
        try:
            with socket.create_connection((ip, port), timeout=0.5):
                return True
        except OSError:
            return False

    if not accepts("127.0.0.1"):
        return False
    try:  # the address Ray would rewrite 127.0.0.1 to (the outgoing interface's)
        from ray._private.services import node_ip_address_from_perspective

        public = node_ip_address_from_perspective()
    except Exception:
        return False
    return not public.startswith("127.") and not accepts(public)


def _is_authentication_failure(exc: BaseException | None) -> bool:
    """Whether Ray's token authentication rejected the connection. Ray (2.5x) wraps its
    ``AuthenticationError`` in a ConnectionError whose cause holds only a traceback text."""
    import ray.exceptions

    auth_error = getattr(ray.exceptions, "AuthenticationError", None)  # Ray >= 2.5x
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if auth_error is not None and isinstance(exc, auth_error):
            return True
        text = str(exc)
        if "InvalidAuthToken" in text or "ray.exceptions.AuthenticationError" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
