"""certevo on an existing Ray cluster, for real.

One head node per module, started with ``ray start --head --block`` in its own process
group and temporary directory, with token authentication on (``RAY_AUTH_MODE=token``; Ray
2.5x turns it on by default for local clusters). certevo reaches it through
``ray job submit``, ``HOST:PORT`` and ``ray://``; a client with a wrong or missing token
gets a certevo error that says how to provide it. A last test looks at the local Ray that
``certevo launch`` starts without an address.

Every certevo command runs in a subprocess, with HOME in a temporary directory (Ray writes
and reads ``~/.ray/auth_token``) and every inherited ``RAY_*`` variable dropped, so nothing
here touches the user's token or collides with the in-process Ray of ``tests/conftest.py``.
The cluster is stopped by its process group, never with ``ray stop`` (which stops every Ray
on the machine, other people's included).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# A search of seconds: 1 K-starts evaluation, then one generation of 3.
TINY = [
    "--set", "data.subset=200", "--set", "model.widths=[8]", "--set", "training.epochs=1",
    "--set", "genome.sparsities=[0.5]", "--set", "search.kstarts=1",
    "--set", "search.population_size=3", "--set", "search.generations=1",
]
# Ray retries a GCS connection its token was refused on 20 times, one second apart; the
# error path is the same with 2 tries and the test is 18 s shorter.
FAST_REFUSAL = {"RAY_gcs_server_port_wait_time_s": "2"}

pytestmark = [
    pytest.mark.skipif(not (BIN / "ray").exists() or not (BIN / "certevo").exists(),
                       reason=f"the ray and certevo console scripts are not installed next to {sys.executable}"),
    pytest.mark.skipif(importlib.util.find_spec("aiohttp_cors") is None or importlib.util.find_spec("grpc") is None,
                       reason="`ray job submit` and ray:// need the dashboard and Ray Client: pip install 'ray[default]'"),
]


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh shell: no inherited RAY_* (address, auth mode, token),
    HOME in the test's temporary directory, the venv's scripts on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", COLUMNS="200",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update(extra)
    return env


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True)
class Cluster:
    gcs_port: int
    dashboard_port: int
    client_port: int
    token: str
    temp_dir: Path

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """A client environment that holds the cluster's token."""
        return clean_env(home, **{"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, **extra})


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:  # workers or agents left behind share the process group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _wait_until_up(proc: subprocess.Popen, cluster: Cluster, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    request = urllib.request.Request(f"http://127.0.0.1:{cluster.dashboard_port}/api/jobs/",
                                     headers={"Authorization": f"Bearer {cluster.token}"})
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    with socket.create_connection(("127.0.0.1", cluster.client_port), timeout=2):
                        return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the Ray head node did not come up in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node Ray cluster with token authentication, 2 CPUs, everything on 127.0.0.1 that
    Ray lets us choose, Ray Client server on."""
    gcs, dashboard, client, agent = free_ports(4)
    # Not under tmp_path: Ray's Unix sockets live under --temp-dir, and pytest's deep
    # temporary paths plus Ray's session directory names come close to the 107-byte limit.
    tmp_root = Path(tempfile.mkdtemp(prefix="certevo-ray-"))
    # <tmp_root>/ray is where Ray looks for "the latest `ray start` cluster" when RAY_TMPDIR=<tmp_root>.
    temp_dir = tmp_root / "ray"
    temp_dir.mkdir()
    c = Cluster(gcs, dashboard, client, secrets.token_hex(16), temp_dir)
    home = tmp_path_factory.mktemp("head-home")
    log = tmp_path_factory.mktemp("head-log") / "ray-start.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
             "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
             "--num-cpus", "2", "--ray-client-server-port", str(client), "--temp-dir", str(temp_dir),
             # The agent's default port (52365) is taken by any other Ray on the machine; a
             # node whose agent cannot bind it never accepts jobs.
             "--dashboard-agent-listen-port", str(agent)],
            env=c.env(home), cwd=temp_dir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_until_up(proc, c, log)
        yield c
    finally:
        _stop(proc)
        shutil.rmtree(tmp_root, ignore_errors=True)


def assert_complete_run(run_dir: Path, output: str) -> None:
    assert (run_dir / "front.json").is_file(), output[-3000:]
    assert (run_dir / "checkpoint" / "state.json").is_file(), output[-3000:]
    front = json.loads((run_dir / "front.json").read_text())
    assert front["generations"] == 1 and front["front"], front


def certevo(*args: str, env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "certevo"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_ray_job_submit_runs_a_search_with_address_auto(cluster, tmp_path):
    run_dir = tmp_path / "run"
    deadline = time.time() + 90
    while True:
        out = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{cluster.dashboard_port}", "--",
             "certevo", "launch", "--address", "auto", "--run-dir", str(run_dir), *TINY],
            env=cluster.env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )
        output = out.stdout + out.stderr
        # The job server answers before the node's job agent has registered with it.
        if "No available agent to submit job" not in output or time.time() > deadline:
            break
        time.sleep(2)
    assert out.returncode == 0, output[-3000:]
    assert "succeeded" in output
    assert_complete_run(run_dir, output)


@pytest.mark.parametrize("form", ["host_port", "ray_client"])
def test_launch_with_an_address(cluster, tmp_path, form):
    address = (f"127.0.0.1:{cluster.gcs_port}" if form == "host_port"
               else f"ray://127.0.0.1:{cluster.client_port}")
    run_dir = tmp_path / "run"
    out = certevo("launch", "--address", address, "--run-dir", str(run_dir), *TINY,
                  env=cluster.env(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_complete_run(run_dir, out.stderr)
    # On a cluster a config that does not choose search.mode runs asynchronously, and says so.
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["search"]["mode"] == "asynchronous"
    assert "search.mode: asynchronous (the default on a Ray cluster" in out.stderr


def test_workers_import_the_packages_shipped_with_py_modules(cluster, tmp_path):
    script = """
import json, sys
import ray
from certevo.cluster.connect import connect

connect(sys.argv[1])

@ray.remote
def where():
    import certevo
    from certevo import cluster, evaluators, population, search
    return [m.__file__ for m in (certevo, cluster, evaluators, population, search)]

print(json.dumps(ray.get(where.remote())))
"""
    out = subprocess.run([sys.executable, "-c", script, f"127.0.0.1:{cluster.gcs_port}"],
                         env=cluster.env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    files = json.loads(out.stdout.strip().splitlines()[-1])
    for file in files:  # not the driver's checkout or site-packages: the copies Ray unpacked
        assert "runtime_resources" in file and "py_modules_files" in file, files
        assert not file.startswith(str(ROOT)), files


@pytest.mark.parametrize("client", ["wrong token", "no token"])
def test_a_refused_token_is_a_certevo_error_that_says_how_to_give_it(cluster, tmp_path, client):
    if client == "wrong token":
        env = cluster.env(tmp_path, RAY_AUTH_TOKEN=secrets.token_hex(16), **FAST_REFUSAL)
    else:  # an empty HOME: no ~/.ray/auth_token either
        env = clean_env(tmp_path, **FAST_REFUSAL)
    run_dir = tmp_path / "run"
    out = certevo("launch", "--address", f"127.0.0.1:{cluster.gcs_port}", "--run-dir", str(run_dir), *TINY,
                  env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    message = next(line for line in out.stderr.splitlines() if line.startswith("certevo: error:"))
    assert "token authentication" in message
    for fix in ("RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN=", "RAY_AUTH_TOKEN_PATH", "ray get-auth-token"):
        assert fix in message, message
    assert not (run_dir / "front.json").exists()


# -- the local Ray certevo starts when no address is given ---------------------------------

def _listening_sockets(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket the processes hold (Linux /proc)."""
    listening: dict[str, tuple[str, int]] = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints each 32-bit word in host (little-endian) byte order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            listening[fields[9]] = (socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, raw),
                                    int(hex_port, 16))
    found = []
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            inode = target[len("socket:["):-1] if target.startswith("socket:[") else None
            if inode in listening:
                found.append((pid, *listening[inode]))
    return found


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1") or address.startswith("::ffff:127.")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads listening sockets from /proc")
def test_local_ray_is_new_listens_on_loopback_only_and_requires_a_token(cluster, tmp_path):
    """The local Ray certevo starts without an address: a new one, not the `ray start`
    cluster Ray would find in its default temp dir (here the module's cluster). Every socket
    its processes listen on (GCS, raylet, object manager, agents, workers, the dashboard
    started on request) is on 127.0.0.1, and its GCS still refuses a client without the
    token."""
    script = """
import json, os, sys
import ray
from certevo.cluster.connect import connect

connect(None, num_cpus=1, dashboard=True)
node = ray._private.worker._global_node
print(json.dumps({"auth_mode": os.environ.get("RAY_AUTH_MODE"), "gcs": node.gcs_address,
                  "dashboard": node.webui_url}), flush=True)
sys.stdin.read()  # hold the local Ray until the test is done
ray.shutdown()
"""
    home = tmp_path / "home"
    home.mkdir()
    assert (cluster.temp_dir / "ray_current_cluster").is_file()
    env = clean_env(home, RAY_TMPDIR=str(cluster.temp_dir.parent))
    driver = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        ready, _, _ = select.select([driver.stdout], [], [], 180)
        line = driver.stdout.readline() if ready else ""
        assert line, driver.stderr.read()[-3000:] if driver.poll() is not None else "no output"
        info = json.loads(line)
        assert not info["gcs"].endswith(f":{cluster.gcs_port}"), info
        assert info["auth_mode"] == "token"
        assert (home / ".ray" / "auth_token").is_file()  # Ray's generated token: in the test's HOME
        dashboard_host, dashboard_port = info["dashboard"].rsplit(":", 1)
        assert dashboard_host == "127.0.0.1", info
        listeners = _listening_sockets(_descendants(driver.pid))
        assert listeners, "found no listening socket of the local Ray"
        on_dashboard_port = [address for _, address, port in listeners if port == int(dashboard_port)]
        assert on_dashboard_port and all(_is_loopback(a) for a in on_dashboard_port), on_dashboard_port
        exposed = [entry for entry in listeners if not _is_loopback(entry[1])]
        assert not exposed, f"the local Ray listens beyond 127.0.0.1: {exposed}"
        assert info["gcs"].startswith("127.0.0.1:"), info

        refused = subprocess.run(
            [sys.executable, "-c", "import sys; from certevo.cluster.connect import connect; connect(sys.argv[1])",
             info["gcs"]],
            env=clean_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), **FAST_REFUSAL),
            cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0
        assert "ConfigError" in refused.stderr and "token authentication" in refused.stderr, refused.stderr[-3000:]
    finally:
        try:
            driver.communicate(input="", timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        driver.wait(timeout=10)
