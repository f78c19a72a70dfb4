"""launchers/k8s/render.py, offline: no Kubernetes cluster runs here. The manifests are checked
against Kubernetes' own schemas (kubernetes-validate, strict, pinned version) and the official
client's models, and each pod's command is evaluated the way the kubelet and node_launch.py would
to get the RANK / WORLD_SIZE / MASTER_ADDR every trainer process sees."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "launchers"))
sys.path.insert(0, str(ROOT / "launchers" / "k8s"))
import node_launch  # noqa: E402
import render  # noqa: E402

KUBERNETES_VERSION = "1.33.0"  # podFailurePolicy is GA from 1.31
CONFIG = "configs/dig_xl2_in1k256.yaml"


def rendered(*argv: str) -> list[dict]:
    """The manifests exactly as `render.py ARGV | kubectl apply -f -` would send them."""
    out = subprocess.run([sys.executable, "launchers/k8s/render.py", *argv], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return list(yaml.safe_load_all(out.stdout))


def xl(nodes: int, *extra: str) -> list[str]:
    micro = 256 // (8 * nodes)
    return ["--nodes", str(nodes), "--gpus-per-node", "8", "--image", "registry.example/dig-scale:v1",
            "--config", CONFIG, "data.path=s3://bucket/in1k-256", f"train.micro_batch_size={micro}", *extra]


@pytest.fixture(scope="module", params=[1, 4], ids=["1-node", "4-nodes"])
def manifests(request) -> tuple[int, dict, dict]:
    service, job = rendered(*xl(request.param, "--secret", "wandb"))
    return request.param, service, job


def test_manifests_pass_strict_schema_validation(manifests, tmp_path):
    nodes, service, job = manifests
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all([service, job]))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    out = subprocess.run([str(validate), "--strict", "--kubernetes-version", KUBERNETES_VERSION, str(path)],
                         capture_output=True, text=True, timeout=120)
    lines = (out.stdout + out.stderr).strip().splitlines()
    # An unknown kind is only a WARN with exit code 0 there: require a pass for each object.
    assert out.returncode == 0 and len(lines) == 2 and all(" passed for resource " in line for line in lines), lines


def test_manifests_round_trip_through_the_kubernetes_client_models(manifests):
    """The client's models keep only the fields Kubernetes knows, with the types it expects: any
    unknown or mistyped field changes the document on the way back."""
    from kubernetes import client

    api = client.ApiClient()

    class Response:  # what ApiClient.deserialize reads from an HTTP response
        def __init__(self, document: dict):
            self.data = json.dumps(document)

    _, service, job = manifests
    for document, model in ((service, "V1Service"), (job, "V1Job")):
        assert api.sanitize_for_serialization(api.deserialize(Response(document), model)) == document


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in a container's command: $$ escapes, unknown names stay."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def pod_environment(job: dict, index: int) -> dict[str, str]:
    """The container env of the pod with completion index `index`: values and downward-API fields."""
    annotations = {render.NODE_RANK_ANNOTATION: str(index)}
    env = {}
    for var in job["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            env[var["name"]] = annotations[re.fullmatch(r"metadata\.annotations\['(.+)'\]", field).group(1)]
    return env


def test_every_rank_gets_its_place_and_rank_zeros_address(manifests):
    nodes, service, job = manifests
    spec, template = job["spec"], job["spec"]["template"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", nodes, nodes)
    name = job["metadata"]["name"]
    # Pod i of an Indexed Job is host <job>-<i>; with the headless Service as its subdomain, rank 0's
    # pod is <job>-0.<service>.
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert template["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    rank_zero_host = f"{name}-0.{service['metadata']['name']}"

    container = template["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    seen = []
    for index in range(nodes):
        command = [expand(arg, pod_environment(job, index)) for arg in container["command"]]
        assert command[:2] == ["python", "launchers/node_launch.py"]
        args = node_launch.parse_args(command[2:])
        assert args.trainer_args == [CONFIG, "data.path=s3://bucket/in1k-256",
                                     f"train.micro_batch_size={256 // (8 * nodes)}", "output_dir=/data/runs",
                                     "data.cache_dir=/cache"]
        assert args.master_port in [p["port"] for p in service["spec"]["ports"]]
        for local_rank in range(args.nproc_per_node):
            env = node_launch.rank_environment(args.node_rank, local_rank, args.nnodes, args.nproc_per_node,
                                               args.master_addr, args.master_port)
            assert (env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == \
                (str(8 * nodes), str(local_rank), rank_zero_host)
            seen.append(int(env["RANK"]))
    assert sorted(seen) == list(range(8 * nodes))


def test_preemption_restarts_and_other_failures_fail_the_job(manifests):
    _, _, job = manifests
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] >= 300
    rules = job["spec"]["podFailurePolicy"]["rules"]

    def action(exit_code: int | None = None, condition: str | None = None) -> str | None:
        """The first matching rule's action, as the Job controller evaluates them."""
        for rule in rules:
            codes = rule.get("onExitCodes")
            if codes and exit_code is not None and \
                    (exit_code in codes["values"]) == (codes["operator"] == "In"):
                return rule["action"]
            if condition and any(c["type"] == condition for c in rule.get("onPodConditions", [])):
                return rule["action"]
        return None

    assert action(exit_code=75) == "Ignore"            # checkpointed: a new pod resumes from `latest`
    assert action(condition="DisruptionTarget") == "Ignore"
    for code in (1, 2, 137):
        assert action(exit_code=code) == "FailJob"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "dig-scale"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory" and volumes["cache"]["emptyDir"] == {}
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "wandb"}}]


@pytest.mark.parametrize("argv, message", [
    (xl(4)[:-1], "train.global_batch_size=256 is not a multiple of train.micro_batch_size=32 x world size 32"),
    (xl(1, "optim.lrr=1"), "optim.lrr: unknown key"),
    (xl(1, "--name", "Bad_Name"), "name 'Bad_Name': need lowercase letters"),
    (["--nodes", "0", "--image", "x", "--config", CONFIG], "--nodes and --gpus-per-node must be at least 1"),
    (["--image", "x", "--config", "configs/missing.yaml"], "--config configs/missing.yaml: no such file"),
])
def test_bad_input_is_refused_with_the_reason(argv, message):
    out = subprocess.run([sys.executable, "launchers/k8s/render.py", *argv], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and message in out.stderr and not out.stdout, out.stderr
