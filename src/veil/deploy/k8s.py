"""Kubernetes manifests for veil's scenarios, built as plain dicts and rendered to YAML.

The reference design (NetApp with Protopia) runs in a namespace ``inference`` with a persistent
volume ``inference-data`` holding FDDB, batch Jobs ``netapp-inference-raw`` and
``netapp-inference-protopia-<ALPHA>`` (``backoffLimit: 5``, ``/dev/shm`` in memory, optional GPUs,
``restartPolicy: Never``), a Triton server whose model repository lives on a volume, and a
JupyterLab workspace with the data volume mounted. These builders produce the same objects for
veil, so that ``kubectl apply -f`` of the rendered YAML is the whole deployment.

Dicts rather than templates: every field is checked by the tests against the official schemas
(``kubernetes-validate``), and the container commands are real ``veil`` subcommands.

Locked down by default (docs/scenarios.md): every pod meets the Pod Security "restricted" profile
(non-root, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp) with a
read-only root filesystem (``/tmp`` is an emptyDir), has CPU and memory requests and limits and
no service-account token; Triton's operator APIs are closed, its metrics are off the Service
unless asked, and a NetworkPolicy admits only the client namespace to its ports. Images may be
pinned by digest; the noise file may be pinned by SHA-256 and a noise key mounted from a Secret
(in the trust zone only: batch and notebook pods, never the Triton pod).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

import veil
from veil.serving.server import ADMIN_HEADER, RESTRICTED_APIS

Manifest = dict[str, Any]

#: The image built from the project's Dockerfile. Tagged with the version: never ``latest``.
DEFAULT_IMAGE = f"veil:{veil.__version__}"
#: A stock Triton container (it has the onnxruntime and pytorch backends that `veil export-triton` targets).
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
DATA_MOUNT = "/data"
MODEL_MOUNT = "/models"
WORKSPACE_MOUNT = "/workspace"
#: UID of the ``veil`` user in the image (see Dockerfile); fsGroup makes volumes writable for it.
VEIL_UID = 1000
#: UID of the ``triton-server`` user of NVIDIA's tritonserver images (runAsNonRoot needs a number).
TRITON_UID = 1000
#: Where a noise key Secret is mounted (read-only, mode 0400) in trust-zone pods.
NOISE_KEY_MOUNT = "/var/run/secrets/veil"
NOISE_KEY_FILE = f"{NOISE_KEY_MOUNT}/key"
#: Default CPU and memory per container (requests = limits): enough for the ×3 FDDB protocol and
#: the default pixel limit (veil.preprocess.MAX_INPUT_PIXELS).
DEFAULT_CPU = "2"
DEFAULT_MEMORY = "8Gi"
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
SCENARIOS = ("batch", "triton", "jupyter")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


@dataclass
class Options:
    """Everything the manifests depend on; defaults follow the reference design."""

    namespace: str = "inference"
    pvc: str = "inference-data"
    pvc_size: str = "50Gi"
    storage_class: str | None = None
    access_mode: str = "ReadWriteMany"
    create_namespace: bool = True
    create_pvc: bool = True
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    gpus: int = 0
    cpu: str | None = DEFAULT_CPU
    memory: str | None = DEFAULT_MEMORY
    shm_size: str = "2Gi"
    # Noise integrity and keyed noise (trust-zone pods only).
    noise_sha256: str | None = None
    noise_key_secret: str | None = None
    # Paths inside the data volume (mounted at /data).
    dataset: str = f"{DATA_MOUNT}/fddb"
    weights: str = f"{DATA_MOUNT}/models/FaceBoxesProd.pth"
    noise_dir: str = f"{DATA_MOUNT}/noise"
    results_dir: str = f"{DATA_MOUNT}/results"
    # Batch scenario.
    alpha: float | None = None
    noisy: bool = False
    shards: int = 1
    parallelism: int | None = None
    run_id: str | None = None
    # Triton scenario.
    triton_server: str = "tritonserver"  # or "veil": `veil serve` (pytriton) in the veil image
    triton_image: str = TRITON_IMAGE
    model_pvc: str = "veil-model-repo"
    model_pvc_size: str = "1Gi"
    service_type: str = "ClusterIP"
    expose_metrics: bool = False
    client_namespace: str | None = None  # who may reach Triton (NetworkPolicy); default: namespace
    # JupyterLab scenario.
    workspace_pvc: str = "veil-workspace"
    workspace_size: str = "10Gi"
    jupyter_secret: str = "veil-jupyter"
    triton_url: str | None = None
    extra_labels: dict[str, str] = field(default_factory=dict)

    def check(self) -> Options:
        """Refuse values Kubernetes would reject, with the reason, before anything is rendered."""
        for what, name in (
            ("namespace", self.namespace),
            ("--pvc", self.pvc),
            ("--model-pvc", self.model_pvc),
            ("--workspace-pvc", self.workspace_pvc),
            ("--jupyter-secret", self.jupyter_secret),
            ("--noise-key-secret", self.noise_key_secret),
            ("--client-namespace", self.client_namespace),
        ):
            if name is None:
                continue
            if not _DNS_LABEL.match(name) or len(name) > 63:
                raise ValueError(
                    f"{what} {name!r} is not a valid Kubernetes name "
                    "(lower-case letters, digits and '-', at most 63 characters)"
                )
        for what, q in (
            ("--pvc-size", self.pvc_size),
            ("--model-pvc-size", self.model_pvc_size),
            ("--workspace-size", self.workspace_size),
            ("--shm-size", self.shm_size),
            ("--memory", self.memory),
        ):
            if q is not None and not _QUANTITY.match(q):
                raise ValueError(f"{what} {q!r} is not a Kubernetes quantity (e.g. 512Mi, 50Gi)")
        if self.cpu is not None and not re.match(r"^[0-9]+(\.[0-9]+)?m?$", self.cpu):
            raise ValueError(f"--cpu {self.cpu!r} is not a CPU quantity (e.g. 2, 0.5, 500m)")
        if self.gpus < 0:
            raise ValueError(f"--gpus must be ≥ 0, got {self.gpus}")
        if self.shards < 1:
            raise ValueError(f"--shards must be ≥ 1, got {self.shards}")
        if self.parallelism is not None and self.parallelism < 1:
            raise ValueError(f"--parallelism must be ≥ 1, got {self.parallelism}")
        if self.noisy and self.alpha is None:
            raise ValueError("--noisy needs --alpha A (the obfuscation level whose fitted noise to use)")
        if self.alpha is not None:
            from veil.obfuscate.alpha import check_alpha  # the one check of ALPHA (imports torch: only when asked)

            check_alpha(self.alpha, "--alpha")
        if self.alpha is not None and not self.noisy:
            raise ValueError("--alpha without --noisy would run the clean model; add --noisy")
        if self.access_mode not in ("ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod"):
            raise ValueError(f"--access-mode {self.access_mode!r} is not a Kubernetes access mode")
        if self.service_type not in ("ClusterIP", "NodePort", "LoadBalancer"):
            raise ValueError(f"--service-type must be ClusterIP, NodePort or LoadBalancer, got {self.service_type!r}")
        if self.triton_server not in ("tritonserver", "veil"):
            raise ValueError(f"--triton-server must be 'tritonserver' or 'veil', got {self.triton_server!r}")
        for flag, image in (("--image", self.image), ("--triton-image", self.triton_image)):
            if "@" in image:
                if not _DIGEST.search(image):
                    raise ValueError(f"{flag} {image!r}: a pinned image is NAME@sha256:<64 hex digits>")
                continue
            if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
                raise ValueError(
                    f"{flag} {image!r} needs an explicit tag other than 'latest' (e.g. veil:0.1.0) "
                    "or a digest (NAME@sha256:…), so that every pod of a run uses the same build"
                )
        if self.noise_sha256 is not None and not _SHA256.match(self.noise_sha256):
            raise ValueError(
                f"--noise-sha256 {self.noise_sha256!r} is not a SHA-256 (64 lower-case hex digits; `sha256sum FILE`)"
            )
        return self


def exposure_warnings(opts: Options, scenario: str) -> list[str]:
    """What in these options exposes a server beyond the cluster, said before it is deployed."""
    out = []
    if scenario in ("triton", "jupyter") and opts.service_type in ("LoadBalancer", "NodePort"):
        what = "Triton (no authentication, no TLS)" if scenario == "triton" else "JupyterLab (token only)"
        out.append(
            f"--service-type {opts.service_type} exposes {what} outside the cluster"
            + (
                " (the NetworkPolicy still admits only the client namespace, if the network plugin enforces it)"
                if scenario == "triton"
                else ""
            )
            + "; prefer ClusterIP and kubectl port-forward, or put TLS and access control in front"
        )
    if scenario == "triton" and opts.expose_metrics:
        out.append(
            "--expose-metrics puts Triton's Prometheus metrics (load and timing of every request) on the Service"
        )
    return out


def alpha_text(alpha: float) -> str:
    """ALPHA as the reference design writes it in names and env (0.8, 0.05)."""
    return f"{alpha:g}"


def _alpha(opts: Options) -> str:
    """ALPHA of a noisy run as written in names and env (:meth:`Options.check` refuses noisy without it)."""
    if opts.alpha is None:
        raise ValueError("--noisy needs --alpha A (the obfuscation level whose fitted noise to use)")
    return alpha_text(opts.alpha)


def batch_job_name(opts: Options) -> str:
    """``netapp-inference-raw`` or ``netapp-inference-protopia-<ALPHA>`` with ALPHA's dot as ``-``
    (``…-protopia-0-8``), sharded or not: one name rule, valid everywhere.

    The reference design's ``…-protopia-0.8`` is a valid Job name but not a DNS-1123 label, and an
    Indexed Job's pods take ``<job>-<index>`` as their hostname, which must be one; so every batch
    Job (and its results file, and its ``-merge`` Job) is named as a label.
    """
    name = "netapp-inference-raw" if not opts.noisy else f"netapp-inference-protopia-{_alpha(opts)}"
    return dns_label(name)


def dns_label(text: str) -> str:
    """``text`` as a DNS-1123 label (lower case, dots → ``-``), or ``ValueError`` if it still is not one."""
    name = text.lower().replace(".", "-")
    if not _DNS_LABEL.match(name) or len(name) > 63:
        raise ValueError(f"{text!r} does not make a valid Kubernetes name (a DNS-1123 label, at most 63 characters)")
    return name


def _labels(component: str, opts: Options) -> dict[str, str]:
    return {**_selector(component), "app.kubernetes.io/version": veil.__version__, **opts.extra_labels}


def _meta(name: str, component: str, opts: Options) -> dict[str, Any]:
    return {"name": name, "namespace": opts.namespace, "labels": _labels(component, opts)}


def namespace(opts: Options) -> Manifest:
    """``kubectl create namespace inference``, as a manifest."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": opts.namespace, "labels": {"app.kubernetes.io/part-of": "veil"}},
    }


def pvc(name: str, size: str, opts: Options, access_mode: str | None = None, component: str = "data") -> Manifest:
    """A PersistentVolumeClaim (the reference design makes these with the DataOps Toolkit)."""
    spec: dict[str, Any] = {
        "accessModes": [access_mode or opts.access_mode],
        "resources": {"requests": {"storage": size}},
    }
    if opts.storage_class:
        spec["storageClassName"] = opts.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(name, component, opts), "spec": spec}


def _resources(opts: Options, gpus: int | None = None) -> dict[str, Any]:
    """Requests = limits for CPU and memory (a runaway image cannot take the node), plus GPUs."""
    gpus = opts.gpus if gpus is None else gpus
    requests: dict[str, str] = {}
    limits: dict[str, Any] = {}
    if opts.cpu:
        requests["cpu"] = limits["cpu"] = opts.cpu
    if opts.memory:
        requests["memory"] = limits["memory"] = opts.memory
    if gpus:
        limits["nvidia.com/gpu"] = gpus  # extended resources: request = limit
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _veil_env(opts: Options) -> list[dict[str, Any]]:
    # The root filesystem is read-only: caches and HOME (Jupyter's runtime files, matplotlib's
    # config) live in the /tmp emptyDir.
    return [
        {"name": "VEIL_WEIGHTS", "value": opts.weights},
        {"name": "VEIL_CACHE_DIR", "value": "/tmp/veil-cache"},
        {"name": "HOME", "value": "/tmp/home"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def _trust_zone_env(opts: Options) -> list[dict[str, Any]]:
    """Noise integrity and key for pods that obfuscate (batch, notebook): never the Triton pod."""
    env = []
    if opts.noise_sha256:
        env.append({"name": "VEIL_NOISE_SHA256", "value": opts.noise_sha256})
    if opts.noise_key_secret:
        env.append({"name": "VEIL_NOISE_KEY_FILE", "value": NOISE_KEY_FILE})
    return env


def _noise_key(opts: Options) -> tuple[list[dict], list[dict]]:
    """(volumes, mounts) for the noise key Secret: its key ``key`` as a read-only file, mode 0400.
    The key's value never appears in the manifests."""
    if not opts.noise_key_secret:
        return [], []
    vol = {
        "name": "noise-key",
        "secret": {"secretName": opts.noise_key_secret, "defaultMode": 0o400, "items": [{"key": "key", "path": "key"}]},
    }
    return [vol], [{"name": "noise-key", "mountPath": NOISE_KEY_MOUNT, "readOnly": True}]


def _container_security(uid: int = VEIL_UID) -> dict[str, Any]:
    """The Pod Security "restricted" profile for one container, plus a read-only root filesystem."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


_TMP_VOLUME = {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}}
_TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}


def _data_volume(opts: Options, read_only: bool = False) -> dict[str, Any]:
    claim: dict[str, Any] = {"claimName": opts.pvc}
    if read_only:
        claim["readOnly"] = True
    return {"name": "data", "persistentVolumeClaim": claim}


def _shm_volume(opts: Options) -> dict[str, Any]:
    """``/dev/shm`` as an in-memory emptyDir: PyTorch data loading needs more than the 64 MiB default."""
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": opts.shm_size}}


def evaluate_args(opts: Options, shard: bool = False, out_partial: str | None = None) -> list[str]:
    """The ``veil evaluate`` arguments a batch pod runs (the image's entrypoint is ``veil``).

    With noise, ALPHA comes from the pod's env (``$(ALPHA)`` is expanded by Kubernetes), as in the
    reference design's Job (``netapp-inference-protopia-0.8`` there, ``…-0-8`` here: :func:`batch_job_name`).
    """
    args = ["evaluate", "--dataset", opts.dataset]
    if opts.noisy:
        args += ["--noisy", "--alpha", "$(ALPHA)", "--noise-dir", opts.noise_dir]
    if shard:
        args += ["--shard", f"auto/{opts.shards}", "--out-partial", out_partial or ""]
    else:
        args += ["--json", f"{opts.results_dir}/{run_id(opts)}.json"]
    return args


def run_id(opts: Options) -> str:
    """Where a run's results go under ``results_dir``: ``--run-id``, else the Job's name."""
    return opts.run_id or batch_job_name(opts)


def _pod_spec(
    containers: list[dict], volumes: list[dict], restart: str, init: list[dict] | None = None
) -> dict[str, Any]:
    """A pod meeting the "restricted" profile: non-root, RuntimeDefault seccomp, no API token,
    and a writable ``/tmp`` (emptyDir) in every container, whose root filesystem is read-only."""
    for c in containers + (init or []):
        if not any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])):
            c.setdefault("volumeMounts", []).append(dict(_TMP_MOUNT))
    if not any(v["name"] == "tmp" for v in volumes):
        volumes = volumes + [dict(_TMP_VOLUME)]
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "fsGroup": VEIL_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": containers,
        "volumes": volumes,
        "restartPolicy": restart,
    }
    if init:
        spec["initContainers"] = init
    return spec


def _veil_container(
    name: str,
    args: list[str],
    opts: Options,
    env: list[dict] | None = None,
    mounts: list[dict] | None = None,
    gpus: int | None = None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": opts.image, "imagePullPolicy": opts.image_pull_policy}
    if command:
        c["command"] = command
    c["args"] = args
    c["env"] = (env or []) + _veil_env(opts)
    res = _resources(opts, gpus)
    if res:
        c["resources"] = res
    c["volumeMounts"] = (
        mounts
        if mounts is not None
        else [{"name": "data", "mountPath": DATA_MOUNT}, {"name": "dshm", "mountPath": "/dev/shm"}]
    )
    c["securityContext"] = _container_security()
    return c


def _selector(component: str) -> dict[str, str]:
    """The labels that pick a component's pods (Deployment, Service, NetworkPolicy)."""
    return {"app.kubernetes.io/name": "veil", "app.kubernetes.io/component": component}


def _job(
    name: str, component: str, opts: Options, containers: list[dict], volumes: list[dict], **spec: Any
) -> Manifest:
    """The one Job skeleton: ``backoffLimit: 5`` and ``restartPolicy: Never`` as in the reference
    design, a restricted pod; ``spec`` adds fields (an Indexed Job's completions)."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(name, component, opts),
        "spec": {
            "backoffLimit": 5,
            **spec,
            "template": {
                "metadata": {"labels": _labels(component, opts)},
                "spec": _pod_spec(containers, volumes, "Never"),
            },
        },
    }


def _deployment(
    name: str, component: str, opts: Options, containers: list[dict], volumes: list[dict], init: list[dict]
) -> Manifest:
    """The one Deployment skeleton: one replica, ``Recreate`` (its volumes are ReadWriteOnce, so an
    old and a new pod cannot run side by side), a restricted pod with init containers."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, component, opts),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": _selector(component)},
            "template": {
                "metadata": {"labels": _labels(component, opts)},
                "spec": _pod_spec(containers, volumes, "Always", init=init),
            },
        },
    }


def batch_job(opts: Options) -> Manifest:
    """The evaluation Job: one pod (reference design), or an Indexed Job of ``opts.shards`` pods.

    Each pod of an Indexed Job evaluates shard ``$JOB_COMPLETION_INDEX`` of ``shards`` and writes a
    partial result under ``results_dir/<run-id>``; :func:`merge_job` combines them afterwards.
    Logs hold the per-fold table (``kubectl logs job/<name>``).
    """
    name = batch_job_name(opts)
    sharded = opts.shards > 1
    env = [{"name": "ALPHA", "value": _alpha(opts)}] if opts.noisy else []
    env += _trust_zone_env(opts)
    args = evaluate_args(opts, shard=sharded, out_partial=f"{opts.results_dir}/{run_id(opts)}")
    key_vols, key_mounts = _noise_key(opts)
    container = _veil_container(
        "inference",
        args,
        opts,
        env=env,
        mounts=[{"name": "data", "mountPath": DATA_MOUNT}, {"name": "dshm", "mountPath": "/dev/shm"}] + key_mounts,
    )
    indexed: dict[str, Any] = {}
    if sharded:
        indexed = {
            "completionMode": "Indexed",
            "completions": opts.shards,
            "parallelism": min(opts.parallelism or opts.shards, opts.shards),
        }
    return _job(name, "batch", opts, [container], [_data_volume(opts), _shm_volume(opts)] + key_vols, **indexed)


def merge_job(opts: Options) -> Manifest:
    """The Job that merges an Indexed Job's partial results into the single-run table and JSON.

    Apply it after ``kubectl wait --for=condition=complete job/<name>``: Kubernetes has no
    dependencies between Jobs, and merging early would find shards missing.
    """
    rid = run_id(opts)
    args = ["merge-results", f"{opts.results_dir}/{rid}", "--json", f"{opts.results_dir}/{rid}.json"]
    container = _veil_container("merge", args, opts, gpus=0, mounts=[{"name": "data", "mountPath": DATA_MOUNT}])
    return _job(f"{batch_job_name(opts)}-merge", "batch", opts, [container], [_data_volume(opts)])


TRITON_PORTS = (("http", 8000), ("grpc", 8001), ("metrics", 8002))


def triton_ports(opts: Options) -> tuple[tuple[str, int], ...]:
    """Inference ports, and metrics only when asked (``--expose-metrics``)."""
    return TRITON_PORTS if opts.expose_metrics else TRITON_PORTS[:2]


#: Triton APIs closed in the pods, as ``veil serve`` closes them.
_RESTRICTED = ",".join(RESTRICTED_APIS)


def tritonserver_script(opts: Options) -> str:
    """The stock server's command line: the operator APIs restricted behind a key drawn at start
    and never shown (so closed to everyone), metrics off unless exposed.

    ``$$`` is Kubernetes' escape for ``$``: the shell, not Kubernetes, expands the key.
    """
    flags = [
        f"--model-repository={triton_repository(opts)}",
        "--strict-readiness=true",
        "--log-verbose=0",
        f"--allow-metrics={'true' if opts.expose_metrics else 'false'}",
        f'--http-restricted-api={_RESTRICTED}:{ADMIN_HEADER}="$$KEY"',
        f'--grpc-restricted-protocol={_RESTRICTED}:{ADMIN_HEADER}="$$KEY"',
    ]
    return "KEY=$$(od -An -tx1 -N24 /dev/urandom | tr -d ' \\n') && exec tritonserver " + " ".join(flags)


def export_args(opts: Options) -> list[str]:
    """``veil export-triton`` into the model repository volume.

    It writes one repository per form under ``/models``: ``onnx`` for the stock Triton image's
    onnxruntime backend, ``python`` for ``veil serve`` (pytriton), ``torchscript`` for the pytorch backend.
    """
    return ["export-triton", "--out", MODEL_MOUNT, "--format", "all"]


def triton_repository(opts: Options) -> str:
    """The repository the server loads: ONNX for stock tritonserver (its libtorch may be older than
    the TorchScript exporter's); ``veil serve`` picks ``/models/python`` itself."""
    return f"{MODEL_MOUNT}/onnx" if opts.triton_server == "tritonserver" else MODEL_MOUNT


def triton_deployment(opts: Options, name: str = "veil-triton") -> Manifest:
    """Triton serving the tail; an init container exports the model repository onto its volume first.

    ``triton_server="tritonserver"`` runs the stock Triton image on that repository;
    ``"veil"`` runs ``veil serve`` (pytriton) from the veil image instead.
    """
    init = _veil_container(
        "export-model",
        export_args(opts),
        opts,
        gpus=0,
        mounts=[
            {"name": "data", "mountPath": DATA_MOUNT, "readOnly": True},
            {"name": "models", "mountPath": MODEL_MOUNT},
        ],
    )
    ports = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in triton_ports(opts)]
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5, "failureThreshold": 3}
    live = {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10, "failureThreshold": 6}
    startup = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5, "failureThreshold": 60}
    mounts = [{"name": "models", "mountPath": MODEL_MOUNT}, {"name": "dshm", "mountPath": "/dev/shm"}]
    if opts.triton_server == "tritonserver":
        server: dict[str, Any] = {
            "name": "tritonserver",
            "image": opts.triton_image,
            "imagePullPolicy": opts.image_pull_policy,
            "command": ["/bin/sh", "-c"],
            "args": [tritonserver_script(opts)],
        }
        res = _resources(opts)
        if res:
            server["resources"] = res
        server["volumeMounts"] = mounts
        server["securityContext"] = _container_security(TRITON_UID)
    else:
        args = ["serve", "--host", "0.0.0.0", "--model-repository", triton_repository(opts)]
        server = _veil_container(
            "tritonserver", args + (["--metrics"] if opts.expose_metrics else []), opts, mounts=mounts
        )
    server.update({"ports": ports, "readinessProbe": probe, "livenessProbe": live, "startupProbe": startup})
    volumes = [
        _data_volume(opts, read_only=True),
        {"name": "models", "persistentVolumeClaim": {"claimName": opts.model_pvc}},
        _shm_volume(opts),
    ]
    return _deployment(name, "triton", opts, [server], volumes, init=[init])


def network_policy(opts: Options, name: str = "veil-triton") -> Manifest:
    """Only pods in the client namespace (default: the same namespace) may reach Triton's ports."""
    client_ns = opts.client_namespace or opts.namespace
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, "triton", opts),
        "spec": {
            "podSelector": {"matchLabels": _selector("triton")},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": client_ns}}}],
                    "ports": [{"protocol": "TCP", "port": p} for _, p in triton_ports(opts)],
                }
            ],
        },
    }


def service(name: str, component: str, ports: Iterable[tuple[str, int]], opts: Options) -> Manifest:
    """A Service in front of a Deployment's pods (ClusterIP by default: reach it with port-forward)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, component, opts),
        "spec": {
            "type": opts.service_type,
            "selector": _selector(component),
            "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports],
        },
    }


JUPYTER_PORT = 8888


def jupyter_deployment(opts: Options, name: str = "veil-jupyterlab") -> Manifest:
    """A JupyterLab workspace in the veil image, with the data volume at /data and the notebooks copied in.

    The token comes from a Secret (never rendered into the YAML): JupyterLab reads ``$JUPYTER_TOKEN``.
    """
    key_vols, key_mounts = _noise_key(opts)
    mounts = [
        {"name": "workspace", "mountPath": WORKSPACE_MOUNT},
        {"name": "data", "mountPath": DATA_MOUNT},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ] + key_mounts
    # Copy the image's /workspace (the notebooks) onto the volume, as the DataOps Toolkit does, without
    # overwriting a user's edits.
    init = _veil_container(
        "copy-notebooks",
        ["-c", f"cp -an {WORKSPACE_MOUNT}/. /vol/ || true"],
        opts,
        gpus=0,
        command=["sh"],
        mounts=[{"name": "workspace", "mountPath": "/vol"}],
    )
    env: list[dict[str, Any]] = [
        {"name": "JUPYTER_TOKEN", "valueFrom": {"secretKeyRef": {"name": opts.jupyter_secret, "key": "token"}}},
        {"name": "VEIL_DATASET", "value": opts.dataset},
        {"name": "VEIL_NOISE_DIR", "value": opts.noise_dir},
    ]
    if opts.triton_url:
        env.append({"name": "VEIL_TRITON_URL", "value": opts.triton_url})
    env += _trust_zone_env(opts)
    lab = _veil_container(
        "jupyterlab",
        ["lab", "--ip=0.0.0.0", f"--port={JUPYTER_PORT}", "--no-browser", f"--ServerApp.root_dir={WORKSPACE_MOUNT}"],
        opts,
        env=env,
        mounts=mounts,
        command=["jupyter"],
    )
    lab["ports"] = [{"name": "http", "containerPort": JUPYTER_PORT, "protocol": "TCP"}]
    lab["readinessProbe"] = {"httpGet": {"path": "/api", "port": "http"}, "periodSeconds": 10}
    volumes = [
        {"name": "workspace", "persistentVolumeClaim": {"claimName": opts.workspace_pvc}},
        _data_volume(opts),
        _shm_volume(opts),
    ] + key_vols
    return _deployment(name, "jupyterlab", opts, [lab], volumes, init=[init])


def _common(opts: Options) -> list[Manifest]:
    docs: list[Manifest] = []
    if opts.create_namespace:
        docs.append(namespace(opts))
    if opts.create_pvc:
        docs.append(pvc(opts.pvc, opts.pvc_size, opts))
    return docs


def render_scenario(scenario: str, opts: Options, part: str = "all") -> list[Manifest]:
    """All manifests of a scenario, in ``kubectl apply`` order.

    ``part``: ``"all"``; for batch ``"merge"`` (only the merge Job of a sharded run) or ``"loader"``
    (Namespace, data volume and a pod to copy data onto it); for triton
    ``"export"`` (only a Job that fills the model repository, for a Triton made by the DataOps Toolkit).
    """
    opts.check()
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}: choose one of {', '.join(SCENARIOS)}")
    if scenario == "batch":
        if part == "loader":
            return _common(opts) + [loader_pod(opts)]
        if part == "merge":
            if opts.shards < 2:
                raise ValueError("--merge is for a sharded run: give the same --shards N (N ≥ 2) as the Job")
            return [merge_job(opts)]
        return _common(opts) + [batch_job(opts)]
    if scenario == "triton":
        if part == "export":
            return [export_job(opts)]
        return _common(opts) + [
            pvc(opts.model_pvc, opts.model_pvc_size, opts, "ReadWriteOnce", "triton"),
            triton_deployment(opts),
            service("veil-triton", "triton", triton_ports(opts), opts),
            network_policy(opts),
        ]
    return _common(opts) + [
        pvc(opts.workspace_pvc, opts.workspace_size, opts, "ReadWriteOnce", "jupyterlab"),
        jupyter_deployment(opts),
        service("veil-jupyterlab", "jupyterlab", [("http", JUPYTER_PORT)], opts),
    ]


def export_job(opts: Options) -> Manifest:
    """A Job that writes an ONNX model repository at the root of ``model_pvc``.

    For a Triton server made elsewhere, e.g. by the DataOps Toolkit, which serves the volume's root
    (``tritonserver --model-store=/models``): the export goes to scratch space and only its ``onnx``
    form is copied onto the volume.
    """
    script = (
        f"veil export-triton --out /tmp/export --format onnx && cp -r /tmp/export/onnx/. {MODEL_MOUNT}/ "
        f"&& ls {MODEL_MOUNT}"
    )
    c = _veil_container(
        "export-model",
        ["-c", script],
        opts,
        gpus=0,
        command=["sh"],
        mounts=[
            {"name": "data", "mountPath": DATA_MOUNT, "readOnly": True},
            {"name": "models", "mountPath": MODEL_MOUNT},
            {"name": "scratch", "mountPath": "/tmp/export"},
        ],
    )
    vols = [
        _data_volume(opts, read_only=True),
        {"name": "models", "persistentVolumeClaim": {"claimName": opts.model_pvc}},
        {"name": "scratch", "emptyDir": {}},
    ]
    return _job("veil-export-triton", "triton", opts, [c], vols)


def loader_pod(opts: Options, name: str = "veil-data-loader") -> Manifest:
    """A pod that mounts the data volume and waits, to copy data onto it (``kubectl cp`` or
    ``kubectl exec … veil k8s stage URL /data/fddb``); it ends itself after an hour."""
    c = _veil_container(
        "loader", ["-c", "sleep 3600"], opts, gpus=0, command=["sh"], mounts=[{"name": "data", "mountPath": DATA_MOUNT}]
    )
    spec = _pod_spec([c], [_data_volume(opts)], "Never")
    spec["activeDeadlineSeconds"] = 3900
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(name, "data", opts), "spec": spec}


def to_yaml(docs: list[Manifest], header: str | None = None) -> str:
    """Multi-document YAML in the order given, with an optional comment header."""
    body = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=120)
    if header:
        body = "".join(f"# {line}\n" for line in header.splitlines()) + body
    return body


def validate(docs: list[Manifest], version: str, strict: bool = True) -> None:
    """Validate manifests against the official schemas of a Kubernetes release (PyPI ``kubernetes-validate``).

    Raises ``RuntimeError`` naming the document and field that fail; ``ImportError`` if the
    validator is not installed (``pip install veil[k8s]``).
    """
    import kubernetes_validate  # optional: the k8s extra

    check_schema_version(version)
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=strict)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            raise RuntimeError(
                f"{doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes {version} "
                f"at {where or '<root>'}: {exc.message}"
            ) from exc


#: Where ``make test`` (and the README) install the validator release that still carries 1.20–1.28.
LEGACY_VALIDATOR_HINT = (
    "pip install --no-deps --target build/kubernetes-validate-1.28 kubernetes-validate==1.28.0 "
    "'setuptools<81', then run with PYTHONPATH=build/kubernetes-validate-1.28"
)


def check_schema_version(version: str) -> None:
    """Refuse, with the versions that work, a release whose schemas the installed validator lacks
    (kubernetes-validate ≥ 1.29 dropped everything before 1.25 and fails with an IndexError)."""
    import importlib.metadata

    import kubernetes_validate.utils as kvu

    have = sorted(set(kvu.all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))
    major_minor = ".".join(str(version).split(".")[:2])
    if any(".".join(v.split(".")[:2]) == major_minor for v in have):
        return
    release = importlib.metadata.version("kubernetes-validate")
    raise RuntimeError(
        f"the installed kubernetes-validate {release} has schemas for Kubernetes {have[0]}–{have[-1]}, not {version}. "
        f"For 1.20–1.28 (e.g. the reference design's 1.21): {LEGACY_VALIDATOR_HINT}"
    )
