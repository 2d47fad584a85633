"""The ready cluster configurations in cluster/configs/ are valid and run real commands.

* ``ray-cluster.yaml`` (Ray cluster launcher, ``local`` provider) against the JSON schema
  Ray ships (``ray/autoscaler/ray-schema.json``) and Ray's own config preparation.
* ``rayjob.yaml`` (KubeRay ``RayJob``) against ``RAYJOB_SCHEMA`` below.
* Every ``certevo ...`` command line in them (values and comments) parses with certevo's
  own argparse parser (and its ``--set`` overrides with the config loader); every
  ``ray start`` flag (and every KubeRay ``rayStartParams`` key) is one that
  ``ray start --help`` lists, and the whole flag set parses with Ray's click command.

Each check also has a test that breaks a config on purpose and sees the check fail.
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
import shlex
import subprocess
import sys

import jsonschema
import pytest
import ray
import yaml

from certevo.search.cli import build_parser
from certevo.search.config import load_config

# Importing Ray's CLI module pulls in Ray Serve, which warns about its own pydantic use.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "cluster" / "configs"
LAUNCHER = CONFIGS / "ray-cluster.yaml"
RAYJOB = CONFIGS / "rayjob.yaml"
PVC = CONFIGS / "certevo-runs-pvc.yaml"
DOCKERFILE = CONFIGS / "Dockerfile"
TORCH_PIN = "torch==2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

# -- the RayJob schema -------------------------------------------------------------------
# Derived from the KubeRay v1 API reference (ray.io/v1: RayJobSpec, RayClusterSpec,
# HeadGroupSpec, WorkerGroupSpec in ray-operator/apis/ray/v1/{rayjob,raycluster}_types.go)
# for the RayJob fields, and from the Kubernetes core/v1 API (ObjectMeta, PodTemplateSpec,
# PodSpec, Container, ResourceRequirements, VolumeMount, Volume) for the parts of the pod
# templates used here. Unknown fields are errors, as with `kubectl apply --validate=strict`;
# required fields are those the API marks required (no `omitempty`).
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_QUANTITY = {"oneOf": [{"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"},
                       {"type": "number", "minimum": 0}]}
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_OBJECT = {"type": "object"}
_DNS_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
             "maxLength": 253}
_CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "additionalProperties": False,
    "properties": {
        "name": _DNS_NAME, "image": {"type": "string", "minLength": 1},
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
        "workingDir": {"type": "string"},
        "env": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "envFrom": {"type": "array", "items": _OBJECT},
        "resources": {"type": "object", "additionalProperties": False, "properties": {
            "requests": {"type": "object", "additionalProperties": _QUANTITY},
            "limits": {"type": "object", "additionalProperties": _QUANTITY},
            "claims": {"type": "array"}}},
        "ports": {"type": "array", "items": {"type": "object", "required": ["containerPort"],
                                             "additionalProperties": False, "properties": {
            "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
            "name": {"type": "string", "maxLength": 15}, "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
            "hostPort": {"type": "integer"}, "hostIP": {"type": "string"}}}},
        "volumeMounts": {"type": "array", "items": {"type": "object", "required": ["name", "mountPath"],
                                                    "additionalProperties": False, "properties": {
            "name": {"type": "string"}, "mountPath": {"type": "string", "pattern": "^/"},
            "readOnly": {"type": "boolean"}, "subPath": {"type": "string"},
            "mountPropagation": {"type": "string"}}}},
        "lifecycle": _OBJECT, "livenessProbe": _OBJECT, "readinessProbe": _OBJECT, "startupProbe": _OBJECT,
        "securityContext": _OBJECT, "terminationMessagePath": {"type": "string"},
        "terminationMessagePolicy": {"type": "string"}, "stdin": {"type": "boolean"}, "tty": {"type": "boolean"},
    },
}
_VOLUME = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {
        "name": _DNS_NAME,
        "persistentVolumeClaim": {"type": "object", "required": ["claimName"], "additionalProperties": False,
                                  "properties": {"claimName": _DNS_NAME, "readOnly": {"type": "boolean"}}},
        "nfs": {"type": "object", "required": ["server", "path"]},
        "emptyDir": _OBJECT, "configMap": _OBJECT, "secret": _OBJECT, "hostPath": _OBJECT, "csi": _OBJECT,
    },
}
_POD_TEMPLATE = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "metadata": {"type": "object", "properties": {"labels": _STRING_MAP, "annotations": _STRING_MAP}},
        "spec": {
            "type": "object", "required": ["containers"], "additionalProperties": False,
            "properties": {
                "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
                "initContainers": {"type": "array", "items": _CONTAINER},
                "volumes": {"type": "array", "items": _VOLUME},
                "securityContext": {"type": "object", "properties": {"fsGroup": {"type": "integer"},
                                                                     "runAsUser": {"type": "integer"},
                                                                     "runAsGroup": {"type": "integer"}}},
                "nodeSelector": _STRING_MAP, "tolerations": {"type": "array"}, "affinity": _OBJECT,
                "serviceAccountName": {"type": "string"}, "imagePullSecrets": {"type": "array"},
                "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
                "terminationGracePeriodSeconds": {"type": "integer"}, "priorityClassName": {"type": "string"},
            },
        },
    },
}
_RAY_START_PARAMS = _STRING_MAP  # map[string]string: numbers and booleans must be quoted
RAYJOB_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "KubeRay RayJob (ray.io/v1), the fields certevo's manifest uses",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "additionalProperties": False, "anyOf": [{"required": ["name"]},
                                                                                 {"required": ["generateName"]}],
                     "properties": {"name": _DNS_NAME, "generateName": {"type": "string"},
                                    "namespace": _DNS_NAME, "labels": _STRING_MAP, "annotations": _STRING_MAP}},
        "status": _OBJECT,
        "spec": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "entrypoint": {"type": "string"},
                "rayClusterSpec": {
                    "type": "object", "required": ["headGroupSpec"], "additionalProperties": False,
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "autoscalerOptions": _OBJECT,
                        "headServiceAnnotations": _STRING_MAP,
                        "gcsFaultToleranceOptions": _OBJECT,
                        "suspend": {"type": "boolean"},
                        "managedBy": {"type": "string"},
                        "headGroupSpec": {
                            "type": "object", "required": ["rayStartParams", "template"],
                            "additionalProperties": False,
                            "properties": {"rayStartParams": _RAY_START_PARAMS, "template": _POD_TEMPLATE,
                                           "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                                           "headService": _OBJECT, "enableIngress": {"type": "boolean"}},
                        },
                        "workerGroupSpecs": {"type": "array", "items": {
                            "type": "object", "required": ["groupName", "rayStartParams", "template"],
                            "additionalProperties": False,
                            "properties": {"groupName": {"type": "string", "minLength": 1},
                                           "replicas": _INT32, "minReplicas": _INT32, "maxReplicas": _INT32,
                                           "idleTimeoutSeconds": _INT32, "numOfHosts": {"type": "integer",
                                                                                        "minimum": 1},
                                           "rayStartParams": _RAY_START_PARAMS, "template": _POD_TEMPLATE,
                                           "scaleStrategy": _OBJECT, "suspend": {"type": "boolean"}},
                        }},
                    },
                },
                "clusterSelector": _STRING_MAP,
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": _INT32,
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": _INT32,
                "runtimeEnvYAML": {"type": "string"},
                "jobId": {"type": "string"},
                "metadata": _STRING_MAP,
                "entrypointResources": {"type": "string"},
                "entrypointNumCpus": {"type": "number", "minimum": 0},
                "entrypointNumGpus": {"type": "number", "minimum": 0},
                "submitterPodTemplate": _POD_TEMPLATE,
                "submitterConfig": {"type": "object", "properties": {"backoffLimit": _INT32}},
                "managedBy": {"type": "string"},
                "deletionPolicy": {"enum": ["DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone"]},
                "deletionStrategy": _OBJECT,
                "suspend": {"type": "boolean"},
            },
        },
    },
}


# -- helpers -------------------------------------------------------------------------------


def ray_schema() -> dict:
    path = pathlib.Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def schema_errors(document: dict, schema: dict) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(document))


def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def rayjob() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


@pytest.fixture(scope="module")
def ray_start_flags() -> set[str]:
    """Every long option ``ray start --help`` lists (the console script next to this Python)."""
    exe = pathlib.Path(sys.executable).with_name("ray")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "ray.scripts.scripts"]
    out = subprocess.run([*command, "start", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    flags = set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", out.stdout))
    assert {"--head", "--address", "--dashboard-host", "--port"} <= flags, "unexpected `ray start --help` output"
    return flags


def certevo_commands(text: str) -> list[str]:
    """Every ``certevo SUBCOMMAND ...`` command line in ``text`` (YAML values and comments):
    from ``certevo`` to the end of the line, a closing quote or backtick, or a comment."""
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    found = []
    for match in re.finditer(r"(?<![\w/.:-])certevo[ \t]+([^\n\"'`]*)", text):
        rest = re.split(r"\s+#", match.group(1), maxsplit=1)[0].strip().rstrip("\\").strip()
        words = rest.split()
        if words and (words[0] in subcommands or " --" in f" {rest}"):  # prose like "certevo installed" is not
            found.append(f"certevo {rest}")
    return found


def check_certevo_command(line: str) -> list[str]:
    """Problems of one command line: it must parse with certevo's parser, and the
    ``--set`` overrides of ``launch`` must be settings the config loader knows."""
    argv = shlex.split(line)[1:]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return [f"{line!r} does not parse with certevo's argument parser"]
    if not getattr(args, "handler", None):
        return [f"{line!r} names no subcommand"]
    if args.command == "launch":
        try:
            load_config(None, args.overrides)
        except Exception as exc:  # ConfigError: names the bad key
            return [f"{line!r}: {exc}"]
    return []


def ray_start_commands(commands: list[str]) -> list[list[str]]:
    """The argument lists of every ``ray start`` in shell command strings."""
    found = []
    for command in commands:
        for part in re.split(r";|&&|\|\|", command):
            words = shlex.split(part)
            for i in range(len(words) - 1):
                if pathlib.PurePath(words[i]).name == "ray" and words[i + 1] == "start":
                    found.append(words[i + 2:])
    return found


def check_ray_start(args: list[str], flags: set[str]) -> list[str]:
    """Problems of one ``ray start`` argument list: unknown flags, or values Ray's click
    command rejects."""
    from ray.scripts.scripts import start

    unknown = [a.split("=", 1)[0] for a in args if a.startswith("--") and a.split("=", 1)[0] not in flags]
    if unknown:
        return [f"ray start {' '.join(args)}: {', '.join(unknown)} not in `ray start --help`"]
    try:
        start.make_context("ray start", list(args))
    except Exception as exc:  # click.UsageError and friends
        return [f"ray start {' '.join(args)}: {exc}"]
    return []


def ray_start_params_as_args(params: dict[str, str]) -> list[str]:
    """KubeRay's translation of rayStartParams: ``--key=value``; ``"true"`` for a flag is ``--key``."""
    from ray.scripts.scripts import start

    is_flag = {p.name.replace("_", "-"): getattr(p, "is_flag", False) for p in start.params}
    return [f"--{k}" if is_flag.get(k) and str(v).lower() == "true" else f"--{k}={v}" for k, v in params.items()]


def launcher_problems(config: dict, flags: set[str]) -> list[str]:
    problems = schema_errors(config, ray_schema())
    commands = [c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands",
                              "head_start_ray_commands", "worker_start_ray_commands", "initialization_commands")
                for c in config.get(key, [])]
    for args in ray_start_commands(commands):
        problems += check_ray_start(args, flags)
    return problems


def rayjob_problems(job: dict, flags: set[str]) -> list[str]:
    problems = schema_errors(job, RAYJOB_SCHEMA)
    if problems:
        return problems
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    for group in groups:
        problems += check_ray_start(ray_start_params_as_args(group["rayStartParams"]), flags)
        spec = group["template"]["spec"]
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"volumeMount {mount['name']!r} names no volume of its pod")
    for line in certevo_commands(job["spec"].get("entrypoint", "")):
        problems += check_certevo_command(line)
    return problems


# -- the launcher config ------------------------------------------------------------------


def test_launcher_config_matches_rays_schema(ray_start_flags):
    assert launcher_problems(launcher(), ray_start_flags) == []


def test_launcher_config_survives_rays_own_preparation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(launcher()))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "local" and prepared["provider"]["worker_ips"]


def test_launcher_installs_the_cpu_torch_pin_before_certevo():
    commands = launcher()["setup_commands"]
    torch_at = next(i for i, c in enumerate(commands) if TORCH_PIN in c)
    assert CPU_INDEX in commands[torch_at]
    certevo_at = next(i for i, c in enumerate(commands) if re.search(r"pip install [^|;]*~/certevo\b", c))
    assert torch_at < certevo_at
    assert any("--no-deps auto-lirpa==0.3" in c for c in commands[certevo_at:])
    mounts = launcher()["file_mounts"]
    assert "~/certevo" in mounts and ".venv" in launcher()["rsync_exclude"]


def test_launcher_head_binds_the_dashboard_to_localhost():
    [head] = ray_start_commands(launcher()["head_start_ray_commands"])
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head
    [worker] = ray_start_commands(launcher()["worker_start_ray_commands"])
    assert any(a.startswith("--address=") for a in worker)
    text = LAUNCHER.read_text()
    assert "port-forward" in text and "CHANGE" in text


def test_launcher_certevo_commands_parse():
    commands = certevo_commands(LAUNCHER.read_text())
    assert any(c.startswith("certevo launch --address auto") for c in commands)
    assert any(c.startswith("certevo resume") for c in commands)
    assert [p for c in commands for p in check_certevo_command(c)] == []


@pytest.mark.parametrize("breakage", ["key typo", "provider typo", "wrong type", "ray start flag", "flag value"])
def test_a_broken_launcher_config_fails(breakage, ray_start_flags):
    config = launcher()
    if breakage == "key typo":
        config["setup_comands"] = config.pop("setup_commands")
    elif breakage == "provider typo":
        del config["provider"]["type"]
        config["provider"]["tpye"] = "local"
    elif breakage == "wrong type":
        config["file_mounts_sync_continuously"] = "yes"
    elif breakage == "ray start flag":
        config["head_start_ray_commands"][-1] += " --dashbord-host=0.0.0.0"
    else:
        config["head_start_ray_commands"][-1] = config["head_start_ray_commands"][-1].replace("--port=6379",
                                                                                              "--port=http")
    assert launcher_problems(config, ray_start_flags) != []


# -- the RayJob manifest ------------------------------------------------------------------


def test_rayjob_matches_the_kuberay_v1_schema(ray_start_flags):
    assert rayjob_problems(rayjob(), ray_start_flags) == []


def test_rayjob_runs_certevo_launch_on_shared_storage():
    job = rayjob()
    [line] = certevo_commands(job["spec"]["entrypoint"])
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert args.command == "launch" and args.address == "auto"
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = [m["mountPath"] for c in head["containers"] for m in c.get("volumeMounts", [])]
    assert any(args.run_dir.startswith(mount.rstrip("/") + "/") for mount in mounts), (args.run_dir, mounts)
    claims = {v["persistentVolumeClaim"]["claimName"] for v in head["volumes"] if "persistentVolumeClaim" in v}
    pvc = yaml.safe_load(PVC.read_text())
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] in claims
    assert all(c["image"] and c["resources"]["limits"] for g in [job["spec"]["rayClusterSpec"]["headGroupSpec"],
                                                                *job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
               for c in g["template"]["spec"]["containers"])


def test_rayjob_comment_commands_parse():
    commands = certevo_commands(RAYJOB.read_text())
    assert len(commands) >= 3 and any("s3://" in c for c in commands)
    assert [p for c in commands for p in check_certevo_command(c)] == []


def test_image_matches_the_ray_version_and_pins_torch_first():
    text = DOCKERFILE.read_text()
    version = rayjob()["spec"]["rayClusterSpec"]["rayVersion"]
    assert re.search(rf"^FROM rayproject/ray:{re.escape(version)}-", text, re.M)
    assert text.index(TORCH_PIN) < text.index("pip install --no-cache-dir .") and CPU_INDEX in text


@pytest.mark.parametrize("breakage", ["spec typo", "container typo", "unquoted param", "unknown param",
                                      "entrypoint flag", "entrypoint setting", "mount without volume",
                                      "wrong apiVersion"])
def test_a_broken_rayjob_fails(breakage, ray_start_flags):
    job = rayjob()
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    if breakage == "spec typo":
        job["spec"]["entrypiont"] = job["spec"].pop("entrypoint")
    elif breakage == "container typo":
        container = head["template"]["spec"]["containers"][0]
        container["imge"] = container.pop("image")
    elif breakage == "unquoted param":
        cluster["workerGroupSpecs"][0]["rayStartParams"]["num-cpus"] = 2
    elif breakage == "unknown param":
        head["rayStartParams"]["dashbord-host"] = "0.0.0.0"
    elif breakage == "entrypoint flag":
        job["spec"]["entrypoint"] = job["spec"]["entrypoint"].replace("--run-dir", "--rundir")
    elif breakage == "entrypoint setting":
        job["spec"]["entrypoint"] += " --set serch.generations=3"
    elif breakage == "mount without volume":
        head["template"]["spec"]["volumes"][0]["name"] = "other"
    else:
        job["apiVersion"] = "ray.io/v1alpha1"
    assert rayjob_problems(job, ray_start_flags) != []


def test_command_extraction_finds_bad_subcommands():
    assert certevo_commands('run "certevo lanch --address auto" then certevo installed.') == [
        "certevo lanch --address auto"]
    assert check_certevo_command("certevo lanch --address auto") != []


# -- the GPU RayJob and image ------------------------------------------------------------
RAYJOB_GPU = CONFIGS / "rayjob-gpu.yaml"
DOCKERFILE_GPU = CONFIGS / "Dockerfile.gpu"


def test_gpu_rayjob_matches_the_kuberay_v1_schema_and_runs_on_cuda(ray_start_flags):
    job = yaml.safe_load(RAYJOB_GPU.read_text())
    assert rayjob_problems(job, ray_start_flags) == []
    [line] = certevo_commands(job["spec"]["entrypoint"])
    assert check_certevo_command(line) == []
    args = build_parser().parse_args(shlex.split(line)[1:])
    config = load_config(None, args.overrides)
    assert config.cluster.device == "cuda" and config.cluster.gpus_per_actor < 1
    [group] = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["rayStartParams"]["num-gpus"] == "1"
    [container] = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cpus = int(group["rayStartParams"]["num-cpus"])
    assert cpus * config.cluster.cpus_per_actor >= round(1 / config.cluster.gpus_per_actor), \
        "every GPU share needs a CPU for its actor"
    assert [p for c in certevo_commands(RAYJOB_GPU.read_text()) for p in check_certevo_command(c)] == []


def test_gpu_image_matches_the_ray_version_and_pins_the_cuda_torch_first():
    text = DOCKERFILE_GPU.read_text()
    version = yaml.safe_load(RAYJOB_GPU.read_text())["spec"]["rayClusterSpec"]["rayVersion"]
    assert re.search(rf"^FROM rayproject/ray:{re.escape(version)}-py311-gpu$", text, re.M)
    assert text.index(TORCH_PIN) < text.index("pip install --no-cache-dir .") and CPU_INDEX not in text
