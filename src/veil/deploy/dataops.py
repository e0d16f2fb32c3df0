"""veil's options mapped onto the NetApp DataOps Toolkit for Kubernetes (PyPI ``netapp-dataops-k8s``).

The reference design provisions its data volume, JupyterLab workspace and Triton server with that
toolkit (``netapp_dataops_k8s_cli.py create volume --namespace=inference --pvc-name=inference-data
--size=…``). :func:`volume_call`, :func:`workspace_call` and :func:`triton_call` say which toolkit
function veil calls with which keyword arguments, and the equivalent toolkit command line, without
importing the toolkit; :func:`execute` makes the call (it needs the toolkit and a configured
cluster). The toolkit is optional: it pulls in ``notebook<7``, ``kubernetes`` and ``netapp-ontap``.
"""

from __future__ import annotations

import importlib
import shlex
from dataclasses import dataclass
from typing import Any

from veil.deploy.k8s import DEFAULT_IMAGE, TRITON_IMAGE

#: The toolkit's module and its command-line script, as installed by ``pip install netapp-dataops-k8s``.
TOOLKIT_MODULE = "netapp_dataops.k8s"
TOOLKIT_CLI = "netapp_dataops_k8s_cli.py"


@dataclass(frozen=True)
class DataOpsCall:
    """One toolkit operation: the Python call and the same operation on the toolkit's command line."""

    function: str
    kwargs: dict[str, Any]
    argv: list[str]

    def python(self) -> str:
        """The call as Python source, for ``--dry-run`` and the docs."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"from {TOOLKIT_MODULE} import {self.function}\n{self.function}({args})"

    def shell(self) -> str:
        """The toolkit's own command line for the same operation."""
        return shlex.join(self.argv)


def _opt(argv: list[str], flag: str, value: Any) -> None:
    if value is not None and value != "":
        argv.append(f"{flag}={value}")


def volume_call(name: str, size: str, namespace: str = "inference", storage_class: str | None = None) -> DataOpsCall:
    """The data volume: ``create volume --pvc-name=inference-data --size=… --namespace=inference``."""
    kwargs: dict[str, Any] = {"pvc_name": name, "volume_size": size, "namespace": namespace}
    if storage_class:
        kwargs["storage_class"] = storage_class
    argv = [TOOLKIT_CLI, "create", "volume", f"--pvc-name={name}", f"--size={size}", f"--namespace={namespace}"]
    _opt(argv, "--storage-class", storage_class)
    return DataOpsCall("create_volume", kwargs, argv)


def _resources(kwargs: dict[str, Any], argv: list[str], gpus: int, cpu: str | None, memory: str | None) -> None:
    if gpus:
        kwargs["request_nvidia_gpu"] = str(gpus)
        _opt(argv, "--nvidia-gpu", gpus)
    if cpu:
        kwargs["request_cpu"] = cpu
        _opt(argv, "--cpu", cpu)
    if memory:
        kwargs["request_memory"] = memory
        _opt(argv, "--memory", memory)


def workspace_call(
    name: str,
    size: str,
    namespace: str = "inference",
    image: str = DEFAULT_IMAGE,
    data_pvc: str | None = "inference-data",
    data_mount: str = "/data",
    storage_class: str | None = None,
    gpus: int = 0,
    cpu: str | None = None,
    memory: str | None = None,
    load_balancer: bool = False,
) -> DataOpsCall:
    """A JupyterLab workspace in the veil image with the data volume mounted (``create jupyterlab``).

    The toolkit asks for the workspace password interactively (or takes ``workspace_password``).
    """
    kwargs: dict[str, Any] = {
        "workspace_name": name,
        "workspace_size": size,
        "namespace": namespace,
        "workspace_image": image,
    }
    argv = [
        TOOLKIT_CLI,
        "create",
        "jupyterlab",
        f"--workspace-name={name}",
        f"--size={size}",
        f"--namespace={namespace}",
        f"--image={image}",
    ]
    if data_pvc:
        kwargs["mount_pvc"] = f"{data_pvc}:{data_mount}"
        _opt(argv, "--mount-pvc", kwargs["mount_pvc"])
    if storage_class:
        kwargs["storage_class"] = storage_class
        _opt(argv, "--storage-class", storage_class)
    _resources(kwargs, argv, gpus, cpu, memory)
    if load_balancer:
        kwargs["load_balancer_service"] = True
        argv.append("--load-balancer")
    return DataOpsCall("create_jupyter_lab", kwargs, argv)


def triton_call(
    name: str,
    model_pvc: str,
    namespace: str = "inference",
    image: str = TRITON_IMAGE,
    gpus: int = 0,
    cpu: str | None = None,
    memory: str | None = None,
    load_balancer: bool = False,
) -> DataOpsCall:
    """A Triton server on a model-repository volume (``create triton-server``).

    Fill the volume first: ``veil k8s render --scenario triton --export | kubectl apply -f -``.
    """
    kwargs: dict[str, Any] = {
        "server_name": name,
        "model_pvc_name": model_pvc,
        "namespace": namespace,
        "server_image": image,
    }
    argv = [
        TOOLKIT_CLI,
        "create",
        "triton-server",
        f"--server-name={name}",
        f"--model-repo-pvc-name={model_pvc}",
        f"--namespace={namespace}",
        f"--image={image}",
    ]
    _resources(kwargs, argv, gpus, cpu, memory)
    if load_balancer:
        kwargs["load_balancer_service"] = True
        argv.append("--load-balancer")
    return DataOpsCall("create_triton_server", kwargs, argv)


def load_toolkit() -> Any:
    """Import the toolkit, or say how to get it."""
    try:
        return importlib.import_module(TOOLKIT_MODULE)
    except ImportError as exc:
        raise RuntimeError(
            f"the NetApp DataOps Toolkit is not installed ({exc}). `pip install netapp-dataops-k8s` "
            "(it needs a cluster with NetApp Trident or the BeeGFS CSI driver), or use --dry-run to see "
            "the calls, or `veil k8s render` for plain manifests"
        ) from exc


def execute(call: DataOpsCall) -> Any:
    """Make the call against the configured cluster (kubeconfig), printing the toolkit's output."""
    module = load_toolkit()
    fn = getattr(module, call.function, None)
    if fn is None:
        raise RuntimeError(
            f"this version of the DataOps Toolkit has no {call.function}(); veil was written "
            "against netapp-dataops-k8s 3.1"
        )
    return fn(print_output=True, **call.kwargs)
