"""Kubernetes manifests: valid against the official schemas (1.21 and current), faithful to the
reference design, and running real ``veil`` commands — the sharded batch Job is executed here pod by
pod and its merged result compared with the single Job's."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from veil.cli.main import build_parser, main
from veil.deploy import k8s
from veil.deploy.local import expand, pod_runs

ROOT = Path(__file__).resolve().parents[1]
#: kubernetes-validate 1.28.0 (schemas 1.20–1.28) installed apart from the venv's current release:
#: ``pip install --no-deps --target build/kubernetes-validate-1.28 kubernetes-validate==1.28.0 'setuptools<81'``
LEGACY_VALIDATOR = Path(os.environ.get("VEIL_KV_LEGACY", ROOT / "build" / "kubernetes-validate-1.28"))
CURRENT = ("1.30.0", "1.37.0")

VARIANTS = {
    "batch-raw": ("batch", {}),
    "batch-protopia": ("batch", {"alpha": 0.8, "noisy": True, "gpus": 1}),
    "batch-indexed": (
        "batch",
        {
            "alpha": 0.05,
            "noisy": True,
            "shards": 8,
            "parallelism": 4,
            "gpus": 2,
            "cpu": "4",
            "memory": "16Gi",
            "storage_class": "ontap-flexgroup",
        },
    ),
    "triton": ("triton", {}),
    "triton-veil-gpu": (
        "triton",
        {
            "triton_server": "veil",
            "gpus": 1,
            "service_type": "NodePort",
            "create_pvc": False,
            "create_namespace": False,
        },
    ),
    "jupyter": ("jupyter", {"triton_url": "http://veil-triton:8000", "gpus": 1, "namespace": "team1"}),
}


def _render_all() -> dict[str, list[dict]]:
    out = {name: k8s.render_scenario(sc, k8s.Options(**kw)) for name, (sc, kw) in VARIANTS.items()}
    out["batch-merge"] = k8s.render_scenario("batch", k8s.Options(shards=8), part="merge")
    out["triton-export"] = k8s.render_scenario("triton", k8s.Options(), part="export")
    out["batch-loader"] = k8s.render_scenario("batch", k8s.Options(), part="loader")
    return out


RENDERED = _render_all()


def _kinds(docs: list[dict]) -> list[str]:
    return [f"{d['kind']}/{d['metadata']['name']}" for d in docs]


def _only(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, _kinds(docs)
    return found[0]


@pytest.mark.parametrize("version", CURRENT)
@pytest.mark.parametrize("variant", sorted(RENDERED))
def test_manifests_validate_against_current_schemas(variant, version):
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (pip install veil[k8s])")
    k8s.validate(RENDERED[variant], version, strict=True)


def test_manifests_validate_against_kubernetes_1_21(tmp_path):
    """The reference design's release. Its schemas ship only with kubernetes-validate ≤ 1.28, kept apart."""
    if not (LEGACY_VALIDATOR / "kubernetes_validate").is_dir():
        pytest.skip(
            f"kubernetes-validate 1.28.0 (schemas for 1.21) is not installed at {LEGACY_VALIDATOR}: "
            "pip install --no-deps --target build/kubernetes-validate-1.28 kubernetes-validate==1.28.0 "
            "'setuptools<81'"
        )
    docs = [d for variant in sorted(RENDERED) for d in RENDERED[variant]]
    broken = json.loads(json.dumps(RENDERED["batch-raw"][-1]))
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMountz"] = []  # must be caught (strict)
    path = tmp_path / "all.yaml"
    path.write_text(k8s.to_yaml(docs + [broken]))
    script = (
        "import json, sys, warnings, yaml\n"
        "warnings.simplefilter('ignore')\n"
        "import kubernetes_validate as kv\n"
        "out = []\n"
        "for d in yaml.safe_load_all(open(sys.argv[1])):\n"
        "    try:\n"
        "        out.append([kv.validate(d, '1.21.0', strict=True), None])\n"
        "    except kv.ValidationError as e:\n"
        "        out.append([None, e.message])\n"
        "print(json.dumps({'file': kv.__file__, 'results': out}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(LEGACY_VALIDATOR)}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path)], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["file"].startswith(str(LEGACY_VALIDATOR)), "the venv's validator was used, not 1.28.0"
    results = report["results"]
    assert len(results) == len(docs) + 1
    for doc, (version, error) in zip(docs, results):
        assert error is None and version == "1.21", f"{doc['kind']}/{doc['metadata']['name']}: {error}"
    assert results[-1][1] and "volumeMountz" in results[-1][1]


def test_validator_rejects_a_broken_manifest():
    pytest.importorskip("kubernetes_validate")
    job = json.loads(json.dumps(RENDERED["batch-raw"][-1]))
    job["spec"]["backoffLimit"] = "five"
    with pytest.raises(RuntimeError, match=r"Job/netapp-inference-raw .* spec\.backoffLimit"):
        k8s.validate([job], "1.37.0")


def test_batch_jobs_follow_the_reference_design():
    raw = _only(RENDERED["batch-raw"], "Job")
    noisy = _only(RENDERED["batch-protopia"], "Job")
    assert _kinds(RENDERED["batch-raw"]) == [
        "Namespace/inference",
        "PersistentVolumeClaim/inference-data",
        "Job/netapp-inference-raw",
    ]
    assert noisy["metadata"]["name"] == "netapp-inference-protopia-0-8"
    for job in (raw, noisy):
        assert job["metadata"]["namespace"] == "inference"
        assert job["spec"]["backoffLimit"] == 5
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
        assert vols["data"]["persistentVolumeClaim"]["claimName"] == "inference-data"
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts == {"data": "/data", "dshm": "/dev/shm", "tmp": "/tmp"}
        assert "completionMode" not in job["spec"]
    c_raw = raw["spec"]["template"]["spec"]["containers"][0]
    c_noisy = noisy["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in c_raw["resources"]["limits"], "no GPU unless asked"
    assert c_raw["resources"] == {
        "requests": {"cpu": k8s.DEFAULT_CPU, "memory": k8s.DEFAULT_MEMORY},
        "limits": {"cpu": k8s.DEFAULT_CPU, "memory": k8s.DEFAULT_MEMORY},
    }
    assert c_noisy["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value") for e in c_noisy["env"]}
    assert env["ALPHA"] == "0.8" and "ALPHA" not in {e["name"] for e in c_raw["env"]}
    assert "$(ALPHA)" in c_noisy["args"], "ALPHA reaches veil through the pod's env, as in the reference design"


@pytest.mark.parametrize("alpha", [None, 0.0, 0.05, 0.8, 0.95, 0.123456, 1e-05])
def test_one_job_name_rule_sharded_or_not(alpha):
    """One pod or an Indexed Job, the batch Job, its results and its merge Job are named by one rule whose
    names are DNS-1123 labels (the pods' hostnames ``<job>-<index>`` must be)."""
    label = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    noisy = {"alpha": alpha, "noisy": True} if alpha is not None else {}
    names = set()
    for shards in (1, 4):
        opts = k8s.Options(shards=shards, **noisy)
        job = _only(k8s.render_scenario("batch", opts), "Job")["metadata"]["name"]
        names.add(job)
        assert job == k8s.batch_job_name(opts) == k8s.run_id(opts)
        for name in (job, f"{job}-{shards - 1}", k8s.merge_job(opts)["metadata"]["name"]):
            assert label.match(name) and len(name) <= 63, name
    assert len(names) == 1, f"one name whether sharded or not, got {names}"
    if alpha is not None:
        assert names.pop().endswith("-" + f"{alpha:g}".replace(".", "-"))


def test_indexed_job_for_shards():
    job = _only(RENDERED["batch-indexed"], "Job")
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 8, 4)
    assert job["metadata"]["name"] == "netapp-inference-protopia-0-05", "pod hostnames must be DNS labels"
    args = spec["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--shard") + 1] == "auto/8"
    assert args[args.index("--out-partial") + 1] == "/data/results/netapp-inference-protopia-0-05"
    res = spec["template"]["spec"]["containers"][0]["resources"]
    assert res == {
        "requests": {"cpu": "4", "memory": "16Gi"},
        "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 2},
    }
    assert _only(RENDERED["batch-indexed"], "PersistentVolumeClaim")["spec"]["storageClassName"] == "ontap-flexgroup"
    merge = _only(RENDERED["batch-merge"], "Job")
    assert merge["metadata"]["name"] == "netapp-inference-raw-merge"
    assert merge["spec"]["template"]["spec"]["containers"][0]["args"][:2] == [
        "merge-results",
        "/data/results/netapp-inference-raw",
    ]


def test_triton_deployment_serves_a_repository_on_a_volume():
    docs = RENDERED["triton"]
    assert _kinds(docs) == [
        "Namespace/inference",
        "PersistentVolumeClaim/inference-data",
        "PersistentVolumeClaim/veil-model-repo",
        "Deployment/veil-triton",
        "Service/veil-triton",
        "NetworkPolicy/veil-triton",
    ]
    pod = _only(docs, "Deployment")["spec"]["template"]["spec"]
    init, server = pod["initContainers"][0], pod["containers"][0]
    assert init["args"][:3] == ["export-triton", "--out", "/models"]
    assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]
    assert server["image"] == k8s.TRITON_IMAGE and server["command"] == ["/bin/sh", "-c"]
    assert "exec tritonserver --model-repository=/models/onnx " in server["args"][0]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "veil-model-repo"}} in pod["volumes"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    svc = _only(docs, "Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert {p["port"] for p in svc["spec"]["ports"]} == {8000, 8001}, "metrics only with --expose-metrics"
    assert svc["spec"]["selector"].items() <= pod_labels(docs).items()
    veil_pod = _only(RENDERED["triton-veil-gpu"], "Deployment")["spec"]["template"]["spec"]
    assert veil_pod["containers"][0]["args"][:3] == ["serve", "--host", "0.0.0.0"]
    assert veil_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _kinds(RENDERED["triton-veil-gpu"])[0] == "PersistentVolumeClaim/veil-model-repo"


def pod_labels(docs: list[dict]) -> dict:
    return _only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]


def test_jupyter_workspace_mounts_the_data_volume_and_keeps_the_token_secret():
    docs = RENDERED["jupyter"]
    assert all(d["metadata"].get("namespace", "team1") == "team1" for d in docs)
    pod = _only(docs, "Deployment")["spec"]["template"]["spec"]
    lab = pod["containers"][0]
    assert lab["command"] == ["jupyter"] and lab["args"][0] == "lab"
    mounts = {m["mountPath"]: m["name"] for m in lab["volumeMounts"]}
    assert mounts["/data"] == "data" and mounts["/workspace"] == "workspace"
    env = {e["name"]: e for e in lab["env"]}
    assert env["JUPYTER_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "veil-jupyter", "key": "token"}
    assert env["VEIL_TRITON_URL"]["value"] == "http://veil-triton:8000"
    assert "value" not in env["JUPYTER_TOKEN"], "the token is never written into the manifests"
    svc = _only(docs, "Service")
    assert svc["spec"]["selector"].items() <= pod_labels(docs).items()


def _veil_commands(container: dict) -> list[list[str]]:
    """The veil command lines a container runs (directly, or inside ``sh -c``)."""
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    args = [expand(a, env) for a in container["args"]]
    if "command" not in container:
        return [args]
    if container["command"] == ["sh"]:
        return [shlex.split(part)[1:] for part in args[1].split("&&") if part.strip().startswith("veil ")]
    return []


def test_every_container_runs_a_real_veil_command():
    """Each ``veil …`` in the manifests parses with veil's own CLI (the flags exist, the values fit)."""
    parser = build_parser()
    seen = set()
    for variant, docs in RENDERED.items():
        for doc in docs:
            pod = doc.get("spec", {}).get("template", {}).get("spec")
            if not pod:
                continue
            for c in pod.get("initContainers", []) + pod["containers"]:
                if c["image"] != k8s.DEFAULT_IMAGE:
                    continue
                for argv in _veil_commands(c):
                    try:
                        ns = parser.parse_args(argv)
                    except SystemExit:
                        pytest.fail(f"{variant}: `veil {shlex.join(argv)}` is not a valid veil command")
                    seen.add(ns.command)
                    if ns.command == "evaluate" and "--noisy" in argv:
                        assert ns.noisy and ns.alpha in (0.8, 0.05)
    assert seen == {"evaluate", "merge-results", "export-triton", "serve"}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"noisy": True}, "--noisy needs --alpha"),
        ({"alpha": 0.8}, "add --noisy"),
        ({"alpha": 1.0, "noisy": True}, "--alpha must be in"),
        ({"namespace": "Inference_1"}, "not a valid Kubernetes name"),
        ({"pvc_size": "50 GB"}, "not a Kubernetes quantity"),
        ({"image": "veil:latest"}, "explicit tag"),
        ({"image": "registry.example/veil"}, "explicit tag"),
        ({"triton_image": "nvcr.io/nvidia/tritonserver:latest"}, "--triton-image"),
        ({"shards": 0}, "--shards must be"),
    ],
)
def test_bad_options_are_refused_with_the_reason(bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        k8s.render_scenario("batch", k8s.Options(**bad))


def test_cli_render_writes_yaml_and_validates(tmp_path, capsys):
    out = tmp_path / "job.yaml"
    rc = main(
        [
            "k8s",
            "render",
            "--scenario",
            "batch",
            "--alpha",
            "0.4",
            "--noisy",
            "--gpus",
            "1",
            "--shards",
            "3",
            "--out",
            str(out),
            "--validate",
            "1.37.0",
        ]
    )
    assert rc == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert _kinds(docs)[-1] == "Job/netapp-inference-protopia-0-4"
    assert docs[-1]["spec"]["completions"] == 3
    assert "Job/netapp-inference-protopia-0-4" in capsys.readouterr().err
    assert main(["k8s", "validate", str(out), "--k8s-version", "1.30.0"]) == 0
    assert "3 documents valid for Kubernetes 1.30.0" in capsys.readouterr().out
    docs[-1]["spec"]["parallelism"] = "three"
    out.write_text(yaml.safe_dump_all(docs))
    assert main(["k8s", "validate", str(out)]) == 2
    assert "spec.parallelism" in capsys.readouterr().err


def test_cli_render_refuses_bad_combinations(capsys):
    assert main(["k8s", "render", "--scenario", "batch", "--noisy"]) == 2
    assert "--noisy needs --alpha" in capsys.readouterr().err
    assert main(["k8s", "render", "--scenario", "triton", "--merge"]) == 2
    assert "--merge and --loader are for --scenario batch" in capsys.readouterr().err
    assert main(["k8s", "render", "--scenario", "batch", "--merge", "--loader", "--shards", "2"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["k8s", "render", "--scenario", "batch", "--merge"]) == 2
    assert "give the same --shards N" in capsys.readouterr().err
    assert main(["k8s", "render", "--scenario", "jupyter", "--export"]) == 2
    assert "--export is for --scenario triton" in capsys.readouterr().err


def _mini_fddb(fddb_dir: Path, root: Path, per_fold: int = 2) -> Path:
    """A copy of FDDB's layout with only a few images of folds 1 and 2 (symlinks): a fast, real dataset."""
    ds = root / "fddb"
    (ds / "originalPics").mkdir(parents=True)
    (ds / "FDDB-folds").symlink_to(fddb_dir / "FDDB-folds")
    rows = [line.split("\t") for line in (fddb_dir / "available_images.tsv").read_text().splitlines()[1:]]
    for fold in ("1", "2"):
        for name, _fold, _faces in [r for r in rows if r[1] == fold][:per_fold]:
            dst = ds / "originalPics" / f"{name}.jpg"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(fddb_dir / "originalPics" / f"{name}.jpg")
    return ds


def _run_pods(job: dict, monkeypatch) -> None:
    """Run a Job's pods in this process (faster than `veil k8s run-local`'s one process per pod)."""
    for pod in pod_runs(job):
        with monkeypatch.context() as m:
            for name, value in pod.env.items():
                m.setenv(name, value)
            assert main(pod.argv + (["--no-progress"] if pod.argv[0] == "evaluate" else [])) == 0


def test_kubernetes_variable_expansion():
    env = {"ALPHA": "0.8", "JOB_COMPLETION_INDEX": "3"}
    assert expand("--alpha=$(ALPHA)", env) == "--alpha=0.8"
    assert expand("$$(ALPHA) $(UNSET) $(JOB_COMPLETION_INDEX)", env) == "$(ALPHA) $(UNSET) 3"


def test_pod_runs_of_an_indexed_job():
    job = _only(RENDERED["batch-indexed"], "Job")
    pods = pod_runs(job)
    assert [p.index for p in pods] == list(range(8))
    assert all(p.env["JOB_COMPLETION_INDEX"] == str(p.index) and p.env["ALPHA"] == "0.05" for p in pods)
    assert pods[5].argv[pods[5].argv.index("--alpha") + 1] == "0.05"
    assert pods[5].shell().startswith("JOB_COMPLETION_INDEX=5 veil evaluate --dataset /data/fddb")
    (single,) = pod_runs(_only(RENDERED["batch-raw"], "Job"))
    assert single.index is None and "JOB_COMPLETION_INDEX" not in single.env
    with pytest.raises(ValueError, match="not veil"):
        pod_runs(_only(RENDERED["triton-export"], "Job"))


@pytest.mark.slow
def test_indexed_job_merged_equals_single_job(fddb_dir, weights_path, tmp_path, monkeypatch, capsys):
    """Execute the rendered Jobs' commands here: 3 pods of the Indexed Job, the merge Job, the single Job."""
    if (fddb_dir / "available_images.tsv").exists() is False:
        pytest.skip("available_images.tsv is absent")
    ds = _mini_fddb(fddb_dir, tmp_path)
    base = {"dataset": str(ds), "weights": str(weights_path), "results_dir": str(tmp_path / "results")}
    single = _only(k8s.render_scenario("batch", k8s.Options(**base, run_id="single")), "Job")
    sharded_opts = k8s.Options(**base, shards=3)
    sharded = _only(k8s.render_scenario("batch", sharded_opts), "Job")
    merge = _only(k8s.render_scenario("batch", sharded_opts, part="merge"), "Job")
    _run_pods(sharded, monkeypatch)
    capsys.readouterr()  # the shards' own (partial) tables
    merge_yaml = tmp_path / "merge.yaml"
    merge_yaml.write_text(k8s.to_yaml([merge]))
    # The merge pod through `veil k8s run-local`: a separate process, as in a container.
    proc = subprocess.run(
        [sys.executable, "-m", "veil", "k8s", "run-local", str(merge_yaml)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged_log = proc.stdout
    assert merged_log.startswith("$ veil merge-results ")
    _run_pods(single, monkeypatch)
    single_log = capsys.readouterr().out
    assert "FDDB-fold-1" in single_log and "mAP" in single_log, "the pod's log holds the per-fold table"

    def fold_lines(log):
        return [ln for ln in log.splitlines() if ln.startswith("FDDB-fold-") or "mAP" in ln]

    assert fold_lines(merged_log) == fold_lines(single_log)
    one = json.loads((tmp_path / "results" / "single.json").read_text())
    many = json.loads((tmp_path / "results" / "netapp-inference-raw.json").read_text())
    assert sorted(p.name for p in (tmp_path / "results" / "netapp-inference-raw").iterdir()) == [
        f"fddb-partial-{i:04d}-of-0003.json" for i in range(3)
    ]
    for key in ("wall_s", "images_per_s", "shards"):
        one.pop(key, None), many.pop(key, None)
    assert one == many and one["images"] == 4


def test_cli_run_local_dry_run_and_failure(tmp_path, capsys):
    sharded = k8s.Options(shards=2, results_dir=str(tmp_path / "results"))
    path = tmp_path / "jobs.yaml"
    path.write_text(k8s.to_yaml(k8s.render_scenario("batch", sharded)))
    assert main(["k8s", "run-local", str(path), "--dry-run"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        f"$ JOB_COMPLETION_INDEX={i} veil evaluate --dataset /data/fddb --shard auto/2 --out-partial "
        f"{tmp_path}/results/netapp-inference-raw"
        for i in range(2)
    ]
    assert "skipped Namespace/inference" in out.err
    # A pod that fails (nothing to merge) stops the run with the Job's name.
    path.write_text(k8s.to_yaml(k8s.render_scenario("batch", sharded, part="merge")))
    assert main(["k8s", "run-local", str(path)]) == 2
    assert "Job netapp-inference-raw-merge failed" in capsys.readouterr().err
    path.write_text(k8s.to_yaml(RENDERED["triton"]))
    assert main(["k8s", "run-local", str(path)]) == 2
    assert "holds no Job" in capsys.readouterr().err


# -- hardening: Pod Security "restricted", resources, network, digests, noise integrity ----------

from veil.deploy.podsecurity import hardening_violations, restricted_violations  # noqa: E402

SHA = "ab" * 32
HARDENED = {
    "batch-keyed": k8s.render_scenario(
        "batch", k8s.Options(alpha=0.8, noisy=True, noise_sha256=SHA, noise_key_secret="veil-noise-key")
    ),
    "triton-metrics": k8s.render_scenario(
        "triton",
        k8s.Options(
            expose_metrics=True,
            client_namespace="clients",
            triton_image="nvcr.io/nvidia/tritonserver@sha256:" + "0" * 64,
        ),
    ),
    "jupyter-keyed": k8s.render_scenario(
        "jupyter",
        k8s.Options(
            noise_sha256=SHA, noise_key_secret="veil-noise-key", image="registry.example/veil@sha256:" + "1" * 64
        ),
    ),
}


@pytest.mark.parametrize("variant", sorted(RENDERED) + sorted(HARDENED))
def test_every_pod_meets_the_restricted_profile_and_veils_hardening(variant):
    docs = {**RENDERED, **HARDENED}[variant]
    pods = [d for d in docs if d["kind"] in ("Pod", "Job", "Deployment")]
    assert pods
    for doc in pods:
        assert restricted_violations(doc) == []
        assert hardening_violations(doc) == []


@pytest.mark.parametrize("variant", sorted(HARDENED))
@pytest.mark.parametrize("version", CURRENT)
def test_hardened_variants_validate_against_current_schemas(variant, version):
    pytest.importorskip("kubernetes_validate")
    k8s.validate(HARDENED[variant], version, strict=True)


@pytest.mark.parametrize(
    "breach, rule",
    [
        (lambda c, p: c["securityContext"].pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
        (lambda c, p: c["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "drop must include ALL"),
        (lambda c, p: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "capabilities.add"),
        (
            lambda c, p: (c["securityContext"].pop("runAsNonRoot"), p["securityContext"].pop("runAsNonRoot")),
            "runAsNonRoot",
        ),
        (lambda c, p: c["securityContext"].update(runAsUser=0), "runAsUser is 0"),
        (
            lambda c, p: (c["securityContext"].pop("seccompProfile"), p["securityContext"].pop("seccompProfile")),
            "seccompProfile",
        ),
        (lambda c, p: c["securityContext"].update(seccompProfile={"type": "Unconfined"}), "Unconfined"),
        (lambda c, p: c["securityContext"].update(privileged=True), "privileged"),
        (lambda c, p: p.update(hostNetwork=True), "hostNetwork"),
        (lambda c, p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
        (lambda c, p: c.setdefault("ports", []).append({"containerPort": 80, "hostPort": 80}), "hostPort"),
    ],
)
def test_the_restricted_checker_catches_each_rule(breach, rule):
    """The checker is not vacuous: each documented rule, broken once, is reported."""
    job = json.loads(json.dumps(_only(RENDERED["batch-raw"], "Job")))
    pod = job["spec"]["template"]["spec"]
    breach(pod["containers"][0], pod)
    assert any(rule in v for v in restricted_violations(job)), restricted_violations(job)


def test_the_hardening_checker_catches_each_rule():
    job = json.loads(json.dumps(_only(RENDERED["batch-raw"], "Job")))
    pod = job["spec"]["template"]["spec"]
    pod["automountServiceAccountToken"] = True
    pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    del pod["containers"][0]["resources"]["limits"]["memory"]
    found = " | ".join(hardening_violations(job))
    assert "automountServiceAccountToken" in found and "readOnlyRootFilesystem" in found and "memory limit" in found


def test_stock_tritonserver_runs_locked_down():
    """The stock container: restricted profile, operator APIs behind a key nobody knows, no metrics."""
    pod = _only(RENDERED["triton"], "Deployment")["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["securityContext"]["runAsUser"] == k8s.TRITON_UID
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    script = server["args"][0]
    apis = "shared-memory,model-repository,logging,trace,statistics"
    assert f"--http-restricted-api={apis}:veil-admin-key=" in script
    assert f"--grpc-restricted-protocol={apis}:veil-admin-key=" in script
    assert "--allow-metrics=false" in script and "/dev/urandom" in script
    assert [p["name"] for p in server["ports"]] == ["http", "grpc"]
    # Kubernetes turns $$ into $ (the shell draws the key); run-local's expansion does the same.
    assert "KEY=$(od " in expand(script, {}) and '"$KEY"' in expand(script, {})
    metrics = _only(HARDENED["triton-metrics"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--allow-metrics=true" in metrics["args"][0]
    assert 8002 in {p["port"] for p in _only(HARDENED["triton-metrics"], "Service")["spec"]["ports"]}
    veil_serve = _only(RENDERED["triton-veil-gpu"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics" not in veil_serve["args"]


def test_network_policy_admits_only_the_client_namespace_to_triton():
    for variant, ns, ports in (
        ("triton", "inference", {8000, 8001}),
        ("triton-metrics", "clients", {8000, 8001, 8002}),
    ):
        docs = {**RENDERED, **HARDENED}[variant]
        pol = _only(docs, "NetworkPolicy")["spec"]
        assert pol["policyTypes"] == ["Ingress"]
        assert pol["podSelector"]["matchLabels"].items() <= pod_labels(docs).items()
        (rule,) = pol["ingress"]
        assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}]
        assert {p["port"] for p in rule["ports"]} == ports


def test_images_can_be_pinned_by_digest():
    digest = "registry.example/veil@sha256:" + "1" * 64
    pod = _only(HARDENED["jupyter-keyed"], "Deployment")["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["containers"] + pod["initContainers"]} == {digest}
    triton = _only(HARDENED["triton-metrics"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert triton["image"].endswith("@sha256:" + "0" * 64)
    with pytest.raises(ValueError, match="NAME@sha256"):
        k8s.render_scenario("batch", k8s.Options(image="veil@sha256:abc"))


def test_noise_sha256_and_key_secret_reach_trust_zone_pods_only():
    for variant in ("batch-keyed", "jupyter-keyed"):
        docs = HARDENED[variant]
        pod = next(d for d in docs if d["kind"] in ("Job", "Deployment"))["spec"]["template"]["spec"]
        c = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["VEIL_NOISE_SHA256"] == SHA
        assert env["VEIL_NOISE_KEY_FILE"] == k8s.NOISE_KEY_FILE
        vol = {v["name"]: v for v in pod["volumes"]}["noise-key"]
        assert vol["secret"] == {
            "secretName": "veil-noise-key",
            "defaultMode": 0o400,
            "items": [{"key": "key", "path": "key"}],
        }
        mount = next(m for m in c["volumeMounts"] if m["name"] == "noise-key")
        assert mount["readOnly"] is True and k8s.NOISE_KEY_FILE.startswith(mount["mountPath"] + "/")
        assert "veil-noise-key" not in json.dumps(c["env"]), "the key is mounted, never put into the env"
    triton = k8s.render_scenario("triton", k8s.Options(noise_sha256=SHA, noise_key_secret="veil-noise-key"))
    text = json.dumps(triton)
    assert "VEIL_NOISE" not in text and "veil-noise-key" not in text, "nothing of the noise on the Triton pod"
    with pytest.raises(ValueError, match="not a SHA-256"):
        k8s.render_scenario("batch", k8s.Options(noise_sha256="abc"))


def test_cli_render_pins_noise_and_warns_on_exposure(tmp_path, capsys):
    out = tmp_path / "t.yaml"
    assert main(["k8s", "render", "--scenario", "triton", "--service-type", "LoadBalancer", "--out", str(out)]) == 0
    assert "warning: --service-type LoadBalancer exposes Triton" in capsys.readouterr().err
    assert (
        main(
            [
                "k8s",
                "render",
                "--scenario",
                "batch",
                "--noisy",
                "--alpha",
                "0.8",
                "--noise-sha256",
                SHA,
                "--noise-key-secret",
                "k",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "warning" not in capsys.readouterr().err
    job = list(yaml.safe_load_all(out.read_text()))[-1]
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VEIL_NOISE_SHA256"] == SHA
    assert main(["k8s", "validate", str(out), "--k8s-version", "1.37.0"]) == 0
    assert "Pod Security restricted profile" in capsys.readouterr().out
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    out.write_text(yaml.safe_dump(job))
    assert main(["k8s", "validate", str(out), "--k8s-version", "1.37.0"]) == 2
    assert "allowPrivilegeEscalation must be false" in capsys.readouterr().err
