"""``veil k8s provision``: veil's options mapped onto the NetApp DataOps Toolkit, checked against the
toolkit's real source (function signatures and command-line options) without a cluster.

The toolkit's own dependencies (kubernetes, pandas, notebook<7, netapp-ontap, fastmcp) are heavy and
need a cluster to be useful, so its source is read with ``ast`` rather than imported. CI installs the
package alone: ``pip install --no-deps --target build/netapp-dataops-k8s netapp-dataops-k8s==3.1.0``.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
from pathlib import Path

import pytest

from veil.cli.main import main
from veil.deploy import dataops

ROOT = Path(__file__).resolve().parents[1]
TOOLKIT_DIR = Path(os.environ.get("VEIL_DATAOPS_SRC", ROOT / "build" / "netapp-dataops-k8s"))


def _toolkit_package() -> Path:
    spec = importlib.util.find_spec("netapp_dataops")
    if spec and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if (TOOLKIT_DIR / "netapp_dataops" / "k8s" / "__init__.py").is_file():
        return TOOLKIT_DIR / "netapp_dataops"
    pytest.skip(
        f"netapp-dataops-k8s is not installed (nor unpacked at {TOOLKIT_DIR}): pip install --no-deps "
        "--target build/netapp-dataops-k8s netapp-dataops-k8s==3.1.0"
    )


@pytest.fixture(scope="module")
def toolkit_functions() -> dict[str, ast.FunctionDef]:
    tree = ast.parse((_toolkit_package() / "k8s" / "__init__.py").read_text())
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


@pytest.fixture(scope="module")
def toolkit_cli_options() -> dict[str, set[str]]:
    """For each help text of the toolkit's CLI, the long options of the getopt call it guards."""
    tree = ast.parse((_toolkit_package() / "netapp_dataops_k8s_cli.py").read_text())
    out: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        calls = [
            c
            for s in node.body
            for c in ast.walk(s)
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "getopt"
        ]
        helps = [
            k.value.id
            for h in node.handlers
            for c in ast.walk(h)
            if isinstance(c, ast.Call)
            for k in c.keywords
            if k.arg == "helpText" and isinstance(k.value, ast.Name)
        ]
        if calls and helps:
            longs = ast.literal_eval(calls[0].args[2])
            out[helps[0]] = {"--" + o.rstrip("=") for o in longs}
    return out


def _params(fn: ast.FunctionDef) -> tuple[set[str], set[str]]:
    """(all parameter names, required ones) of a toolkit function."""
    args = fn.args.args
    required = {a.arg for a in args[: len(args) - len(fn.args.defaults)]}
    return {a.arg for a in args}, required


CALLS = {
    "volume": dataops.volume_call("inference-data", "50Gi", "inference", "ontap-flexgroup"),
    "workspace": dataops.workspace_call(
        "veil",
        "10Gi",
        "inference",
        "veil:0.1.0",
        "inference-data",
        storage_class="ontap-flexgroup",
        gpus=1,
        cpu="2",
        memory="8Gi",
        load_balancer=True,
    ),
    "triton": dataops.triton_call(
        "veil", "veil-model-repo", "inference", gpus=1, cpu="2", memory="8Gi", load_balancer=True
    ),
}
HELP = {
    "create_volume": "helpTextCreateVolume",
    "create_jupyter_lab": "helpTextCreateJupyterLab",
    "create_triton_server": "helpTextDeployTritonServer",
}


def test_reference_volume_command():
    """The reference design's `create volume … --namespace=inference`, as veil maps it."""
    call = dataops.volume_call("inference-data", "50Gi")
    assert call.function == "create_volume"
    assert call.kwargs == {"pvc_name": "inference-data", "volume_size": "50Gi", "namespace": "inference"}
    assert call.shell() == (
        "netapp_dataops_k8s_cli.py create volume --pvc-name=inference-data --size=50Gi --namespace=inference"
    )


def test_workspace_mounts_the_data_volume():
    call = CALLS["workspace"]
    assert call.kwargs["mount_pvc"] == "inference-data:/data"
    assert call.kwargs["request_nvidia_gpu"] == "1" and call.kwargs["workspace_image"] == "veil:0.1.0"
    assert "--mount-pvc=inference-data:/data" in call.argv and "--load-balancer" in call.argv
    assert "mount_pvc" not in dataops.workspace_call("w", "1Gi", data_pvc=None).kwargs


@pytest.mark.parametrize("what", sorted(CALLS))
def test_kwargs_fit_the_toolkit_functions(what, toolkit_functions):
    call = CALLS[what]
    assert call.function in toolkit_functions, f"netapp_dataops.k8s has no {call.function}()"
    names, required = _params(toolkit_functions[call.function])
    unknown = set(call.kwargs) - names
    assert not unknown, f"{call.function}() has no parameter(s) {unknown}"
    assert required <= set(call.kwargs), f"{call.function}() also needs {required - set(call.kwargs)}"
    assert "print_output" in names, "execute() passes print_output=True"


@pytest.mark.parametrize("what", sorted(CALLS))
def test_command_line_options_exist_in_the_toolkit_cli(what, toolkit_cli_options):
    call = CALLS[what]
    longs = toolkit_cli_options[HELP[call.function]]
    assert call.argv[0] == dataops.TOOLKIT_CLI
    for arg in call.argv[3:]:
        assert arg.split("=", 1)[0] in longs, f"`{call.argv[1]} {call.argv[2]}` has no option {arg}"


def test_mapping_check_is_not_vacuous(toolkit_functions, toolkit_cli_options):
    """A misspelt keyword or option is caught by the same checks."""
    names, _ = _params(toolkit_functions["create_volume"])
    assert "volume_size" in names and "size" not in names
    assert "--size" in toolkit_cli_options["helpTextCreateVolume"]
    assert "--volume-size" not in toolkit_cli_options["helpTextCreateVolume"]


def test_cli_dry_run_prints_both_forms(capsys):
    assert main(["k8s", "provision", "triton", "--model-pvc", "veil-model-repo", "--gpus", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "create_triton_server(server_name='veil', model_pvc_name='veil-model-repo'" in out
    assert "netapp_dataops_k8s_cli.py create triton-server --server-name=veil" in out
    assert "--nvidia-gpu=1" in out


def test_cli_without_toolkit_says_how_to_get_it(capsys):
    if importlib.util.find_spec("netapp_dataops") is not None:
        pytest.skip("the toolkit is importable here; this checks the message when it is not")
    assert main(["k8s", "provision", "volume", "--size", "1Gi"]) == 2
    err = capsys.readouterr().err
    assert "pip install netapp-dataops-k8s" in err and "--dry-run" in err


def test_cli_maps_every_provision_flag():
    """Each `veil k8s provision` flag lands in the call (none silently dropped)."""
    from veil.cli.k8s import dataops_call_from_args
    from veil.cli.main import build_parser

    args = build_parser().parse_args(
        [
            "k8s",
            "provision",
            "workspace",
            "--name",
            "w1",
            "--size",
            "5Gi",
            "--namespace",
            "team1",
            "--image",
            "veil:0.1.0-cuda",
            "--pvc",
            "d1",
            "--storage-class",
            "sc",
            "--gpus",
            "2",
            "--cpu",
            "1",
            "--memory",
            "2Gi",
            "--load-balancer",
        ]
    )
    call = dataops_call_from_args(args)
    assert call.kwargs == {
        "workspace_name": "w1",
        "workspace_size": "5Gi",
        "namespace": "team1",
        "workspace_image": "veil:0.1.0-cuda",
        "mount_pvc": "d1:/data",
        "storage_class": "sc",
        "request_nvidia_gpu": "2",
        "request_cpu": "1",
        "request_memory": "2Gi",
        "load_balancer_service": True,
    }
    sig = inspect.signature(dataops.workspace_call)
    assert set(sig.parameters) >= {"gpus", "cpu", "memory", "load_balancer", "storage_class"}


def test_provision_warns_when_a_load_balancer_exposes_the_server(capsys):
    assert main(["k8s", "provision", "triton", "--load-balancer", "--dry-run"]) == 0
    assert "warning: --load-balancer exposes Triton" in capsys.readouterr().err
    assert main(["k8s", "provision", "triton", "--dry-run"]) == 0
    assert "warning" not in capsys.readouterr().err
