#!/usr/bin/env python3
"""Kubernetes manifests for one dig-scale training run: a headless Service and an Indexed Job.

    launchers/k8s/render.py --nodes 4 --gpus-per-node 8 --image REGISTRY/dig-scale:TAG \\
        --config configs/dig_xl2_in1k256.yaml data.path=s3://bucket/in1k-256 train.micro_batch_size=8 \\
        | kubectl apply -f -

One pod per node (Job index = node rank) requests all its GPUs and runs launchers/node_launch.py, which
starts one `python -m dig_scale.train CONFIG [overrides]` per GPU; rank 0's pod is found through the
Service's DNS name. A PersistentVolumeClaim (made beforehand, ReadWriteMany) is mounted at /data for
the data and the run directory (output_dir=/data/runs), and an emptyDir at /cache holds the node's
copy of the shards it reads (data.cache_dir=/cache), unless overrides set them. Exit 75 (the
trainers checkpointed after SIGTERM or a peer's preemption) replaces the pod and resumes from
`latest`; an eviction or node drain does too; any other failure, a config error included, fails the
Job. The image must hold this repository at --workdir with dig_scale installed.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

DATA_MOUNT = "/data"
CACHE_MOUNT = "/cache"
REQUEUE_EXIT_CODE = 75  # dig_scale.train.preemption.REQUEUE_EXIT_CODE
NODE_RANK_ANNOTATION = "batch.kubernetes.io/job-completion-index"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def job_name_for(run_name: str) -> str:
    """A DNS label from a run name: dig_xl2_in1k256 -> dig-xl2-in1k256."""
    return re.sub(r"[^a-z0-9-]+", "-", run_name.lower()).strip("-")


def trainer_arguments(config: str, overrides: list[str]) -> list[str]:
    """CONFIG and overrides as every rank gets them: the run directory goes to the shared volume,
    the dataset is read through a cache on the node (every node decompressing the same shards in
    place on the shared volume would collide), unless the overrides say otherwise."""
    for key, value in (("output_dir", f"{DATA_MOUNT}/runs"), ("data.cache_dir", CACHE_MOUNT)):
        if not any(o.startswith(f"{key}=") for o in overrides):
            overrides = [*overrides, f"{key}={value}"]
    return [config, *overrides]


def service(name: str, port: int) -> dict[str, Any]:
    """Headless: DNS gives each pod `<job>-<index>.<service>`, published before the pod is ready so
    the other ranks can reach rank 0 while it starts."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"app": "dig-scale"}},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"dig-scale/job": name},
                     "ports": [{"name": "rendezvous", "port": port, "targetPort": port}]}}


def node_command(name: str, nodes: int, gpus: int, port: int, trainer_args: list[str]) -> list[str]:
    """The pod's command; Kubernetes expands $(JOB_COMPLETION_INDEX) from the container's env."""
    return ["python", "launchers/node_launch.py", "--nnodes", str(nodes), "--node-rank", "$(JOB_COMPLETION_INDEX)",
            "--nproc-per-node", str(gpus), "--master-addr", f"{name}-0.{name}", "--master-port", str(port),
            "--", *trainer_args]


def job(args: argparse.Namespace, name: str, trainer_args: list[str]) -> dict[str, Any]:
    container = {
        "name": "trainer",
        "image": args.image,
        "workingDir": args.workdir,
        "command": node_command(name, args.nodes, args.gpus_per_node, args.port, trainer_args),
        "env": [
            {"name": "JOB_COMPLETION_INDEX",
             "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{NODE_RANK_ANNOTATION}']"}}},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "NCCL_DEBUG", "value": "WARN"},
            {"name": "DIG_SCALE_DATA", "value": f"{DATA_MOUNT}/cache"},
        ],
        "ports": [{"name": "rendezvous", "containerPort": args.port}],
        "resources": {"limits": {"nvidia.com/gpu": str(args.gpus_per_node)}},
        "volumeMounts": [{"name": "data", "mountPath": DATA_MOUNT}, {"name": "cache", "mountPath": CACHE_MOUNT},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if args.secret:
        container["envFrom"] = [{"secretRef": {"name": secret}} for secret in args.secret]
    shm = {"medium": "Memory", **({"sizeLimit": args.shm_size} if args.shm_size else {})}
    pod = {
        "metadata": {"labels": {"app": "dig-scale", "dig-scale/job": name}},
        "spec": {
            "subdomain": name,                   # with the Service: <job>-<index>.<name> resolves
            "restartPolicy": "Never",            # restarts go through the pod failure policy
            "terminationGracePeriodSeconds": args.grace_period,
            "containers": [container],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": args.pvc}},
                        {"name": "cache", "emptyDir": {}},     # the node's disk
                        {"name": "dshm", "emptyDir": shm}],   # data-loader workers share memory through it
        },
    }
    rules = [
        # Evicted, preempted, node drained: not the run's fault, start the pod again.
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        # The trainers checkpointed and asked to be restarted.
        {"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "In",
                                             "values": [REQUEUE_EXIT_CODE]}},
        # Anything else (config error, crash) will fail again: stop.
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "NotIn",
                                              "values": [0, REQUEUE_EXIT_CODE]}},
    ]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": {"app": "dig-scale"}},
            "spec": {"completionMode": "Indexed", "completions": args.nodes, "parallelism": args.nodes,
                     "backoffLimit": args.backoff_limit, "podFailurePolicy": {"rules": rules}, "template": pod}}


def check_config(config: str, overrides: list[str], world_size: int) -> str:
    """Load the config as the trainer will, check the batch fits the world size; returns the run name."""
    from dig_scale.config import ConfigError, load_config
    from dig_scale.train.deepspeed_config import gradient_accumulation_steps

    try:
        cfg = load_config(config, overrides)
        gradient_accumulation_steps(cfg, world_size)
    except ConfigError as e:
        raise SystemExit(f"render.py: config error: {e}") from None
    return cfg.run_name


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1, help="pods, one per node")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs each pod requests = ranks per pod")
    parser.add_argument("--image", required=True, help="container image with this repository and dig_scale")
    parser.add_argument("--config", required=True, help="experiment config, a path inside the image's --workdir")
    parser.add_argument("overrides", nargs="*", help="key.path=value, as for python -m dig_scale.train")
    parser.add_argument("--name", help="Job and Service name (default: from the run name)")
    parser.add_argument("--namespace", help="namespace of both objects (default: kubectl's)")
    parser.add_argument("--workdir", default="/workspace/dig-scale", help="the repository inside the image")
    parser.add_argument("--pvc", default="dig-scale", help=f"PersistentVolumeClaim mounted at {DATA_MOUNT}")
    parser.add_argument("--secret", action="append", default=[],
                        help="Secret whose keys become env vars (WANDB_API_KEY, object-store credentials)")
    parser.add_argument("--port", type=int, default=29500, help="rank 0's rendezvous port")
    parser.add_argument("--grace-period", type=int, default=600,
                        help="seconds between SIGTERM and SIGKILL: one step plus a checkpoint")
    parser.add_argument("--shm-size", help="size limit of the memory-backed /dev/shm, e.g. 64Gi")
    parser.add_argument("--backoff-limit", type=int, default=2,
                        help="pod failures the policy does not classify before the Job fails")
    args = parser.parse_intermixed_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 1:
        parser.error(f"--nodes and --gpus-per-node must be at least 1 (got {args.nodes}, {args.gpus_per_node})")
    if not Path(args.config).is_file():
        parser.error(f"--config {args.config}: no such file here (render from the checkout the image was built from)")
    return args


def render(argv: list[str]) -> list[dict[str, Any]]:
    args = parse_args(argv)
    run_name = check_config(args.config, args.overrides, args.nodes * args.gpus_per_node)
    name = args.name or job_name_for(run_name)
    longest = f"{name}-{args.nodes - 1}"        # the last pod's hostname
    if not _DNS_LABEL.match(name) or len(longest) > 63:
        raise SystemExit(f"render.py: name {name!r}: need lowercase letters, digits and '-' (a DNS label), "
                         f"at most 63 characters with the pod index ({longest!r}); pass --name")
    documents = [service(name, args.port), job(args, name, trainer_arguments(args.config, args.overrides))]
    if args.namespace:
        for document in documents:
            document["metadata"]["namespace"] = args.namespace
    return documents


def main(argv: list[str] | None = None) -> int:
    documents = render(sys.argv[1:] if argv is None else argv)
    sys.stdout.write(yaml.safe_dump_all(documents, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
