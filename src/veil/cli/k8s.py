"""``veil k8s render|validate|provision``: Kubernetes manifests and DataOps Toolkit volumes for the scenarios."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml

from veil.cli.options import alpha_arg
from veil.deploy import dataops, k8s
from veil.deploy.podsecurity import hardening_violations, restricted_violations

_D = k8s.Options()


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--namespace", default=_D.namespace, help="namespace (default: %(default)s)")
    g.add_argument(
        "--pvc", default=_D.pvc, help="data volume claim holding the dataset, weights and noise (default: %(default)s)"
    )
    g.add_argument("--gpus", type=int, default=_D.gpus, help="nvidia.com/gpu limit per pod (default: %(default)s)")
    g.add_argument(
        "--cpu", default=_D.cpu, help="CPU request and limit per container, e.g. 2 or 500m (default: %(default)s)"
    )
    g.add_argument(
        "--memory", default=_D.memory, help="memory request and limit per container, e.g. 8Gi (default: %(default)s)"
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "k8s",
        help="Kubernetes manifests (batch Job, Triton, JupyterLab) and data volumes",
        description="Deploy veil's three scenarios on Kubernetes, mirroring the reference "
        "design: `render` writes the YAML for `kubectl apply -f`, `validate` checks "
        "YAML against the official schemas, `provision` makes volumes, workspaces "
        "and Triton servers with the NetApp DataOps Toolkit (optional).",
    )
    ksub = p.add_subparsers(dest="k8s_command", metavar="ACTION", required=True)

    r = ksub.add_parser(
        "render",
        help="write the manifests of a scenario as YAML",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write the manifests of a scenario (Namespace, PVCs, then the workload) as YAML.",
        epilog="examples:\n"
        "  veil k8s render --scenario batch | kubectl apply -f -          # netapp-inference-raw\n"
        "  veil k8s render --scenario batch --alpha 0.8 --noisy --gpus 1   # netapp-inference-protopia-0-8\n"
        "  veil k8s render --scenario batch --shards 8 --out job.yaml     # Indexed Job, 8 pods\n"
        "  veil k8s render --scenario batch --shards 8 --merge            # then: merge the shards\n"
        "  veil k8s render --scenario triton --out triton.yaml\n"
        "  veil k8s render --scenario jupyter --triton-url http://veil-triton:8000",
    )
    r.add_argument(
        "--scenario",
        required=True,
        choices=k8s.SCENARIOS,
        help="batch: evaluation Job(s); triton: Triton Deployment+Service with its model "
        "repository volume; jupyter: JupyterLab workspace",
    )
    r.add_argument("--out", default="-", help="output file, or - for stdout (default: %(default)s)")
    r.add_argument(
        "--image",
        default=_D.image,
        help="veil image built from the Dockerfile, NAME:TAG or pinned NAME@sha256:DIGEST (default: %(default)s)",
    )
    _add_common(r)
    g = r.add_argument_group("volumes")
    g.add_argument("--pvc-size", default=_D.pvc_size, help="size of the data volume claim (default: %(default)s)")
    g.add_argument("--storage-class", help="StorageClass of new claims (default: the cluster's default)")
    g.add_argument(
        "--access-mode",
        default=_D.access_mode,
        help="access mode of the data volume (default: %(default)s, so that shards and the "
        "workspace can mount it at once)",
    )
    g.add_argument(
        "--existing-pvc",
        action="store_true",
        help="the data volume exists (e.g. made by `veil k8s provision volume`): don't render it",
    )
    g.add_argument("--no-namespace", action="store_true", help="don't render the Namespace")
    g.add_argument("--dataset", default=_D.dataset, help="FDDB directory inside the pod (default: %(default)s)")
    g.add_argument("--weights", default=_D.weights, help="FaceBoxes weights inside the pod (default: %(default)s)")
    g.add_argument("--noise-dir", default=_D.noise_dir, help="fitted noise files inside the pod (default: %(default)s)")
    g.add_argument("--results-dir", default=_D.results_dir, help="where results go (default: %(default)s)")
    n = r.add_argument_group("noise integrity (batch and jupyter pods; never the Triton pod)")
    n.add_argument(
        "--noise-sha256",
        metavar="HEX",
        help="pin the noise file: set $VEIL_NOISE_SHA256, so a noise file with another SHA-256 is "
        "refused (the noise directory is on a shared volume)",
    )
    n.add_argument(
        "--noise-key-secret",
        metavar="NAME",
        help="mount key 'key' of this Secret read-only (mode 0400) and point $VEIL_NOISE_KEY_FILE "
        "at it, for keyed noise; the key itself is never written into the YAML",
    )
    b = r.add_argument_group("batch")
    b.add_argument("--alpha", type=alpha_arg, help="obfuscation level ALPHA in [0, 1) (with --noisy), e.g. 0.8")
    b.add_argument("--noisy", action="store_true", help="evaluate with obfuscation (needs --alpha)")
    b.add_argument(
        "--shards",
        type=int,
        default=1,
        help="N > 1: an Indexed Job of N pods, each evaluating 1/N of the dataset (default: 1)",
    )
    b.add_argument("--parallelism", type=int, help="pods running at once for --shards (default: N)")
    b.add_argument("--run-id", help="results subdirectory name (default: the Job's name)")
    b.add_argument(
        "--merge",
        action="store_true",
        help="render only the Job that merges a sharded run; apply it after "
        "`kubectl wait --for=condition=complete job/NAME`",
    )
    b.add_argument(
        "--loader",
        action="store_true",
        help="render the Namespace, the data volume and a pod that mounts it, to copy FDDB, the "
        "weights and noise onto it (kubectl cp, or `veil k8s stage` inside it)",
    )
    t = r.add_argument_group("triton")
    t.add_argument(
        "--triton-server",
        default=_D.triton_server,
        choices=["tritonserver", "veil"],
        help="tritonserver: the stock Triton image; veil: `veil serve` in the veil image (default: %(default)s)",
    )
    t.add_argument("--triton-image", default=_D.triton_image, help="Triton image (default: %(default)s)")
    t.add_argument("--model-pvc", default=_D.model_pvc, help="model repository claim (default: %(default)s)")
    t.add_argument(
        "--service-type",
        default=_D.service_type,
        choices=["ClusterIP", "NodePort", "LoadBalancer"],
        help="Service type for Triton and JupyterLab (default: %(default)s; use kubectl port-forward)",
    )
    t.add_argument(
        "--expose-metrics",
        action="store_true",
        help="turn Triton's metrics on and put port 8002 on the Service (default: off)",
    )
    t.add_argument(
        "--client-namespace",
        metavar="NS",
        help="the only namespace whose pods may reach Triton (NetworkPolicy; default: --namespace)",
    )
    t.add_argument(
        "--export",
        action="store_true",
        help="render only a Job that fills the model repository volume (for a Triton server "
        "made by `veil k8s provision triton`)",
    )
    j = r.add_argument_group("jupyter")
    j.add_argument("--workspace-size", default=_D.workspace_size, help="workspace claim size (default: %(default)s)")
    j.add_argument(
        "--jupyter-secret",
        default=_D.jupyter_secret,
        help="Secret whose key 'token' is the JupyterLab token (default: %(default)s)",
    )
    j.add_argument("--triton-url", help="set $VEIL_TRITON_URL in the workspace, e.g. http://veil-triton:8000")
    r.add_argument(
        "--validate",
        metavar="VERSION",
        action="append",
        default=[],
        help="also validate against this Kubernetes release's schemas, e.g. 1.37.0 (repeatable; "
        "needs kubernetes-validate)",
    )
    r.set_defaults(func=_render)

    v = ksub.add_parser(
        "validate",
        help="validate YAML manifests against the official Kubernetes schemas",
        description="Validate every document of YAML files against a Kubernetes release's "
        "official schemas (strict: unknown fields are errors). Uses kubernetes-validate.",
    )
    v.add_argument("files", nargs="+", help="YAML files (- for stdin)")
    v.add_argument(
        "--k8s-version",
        action="append",
        default=[],
        help="release to validate against, repeatable (default: the validator's latest)",
    )
    v.set_defaults(func=_validate)

    rl = ksub.add_parser(
        "run-local",
        help="run the Jobs of a rendered YAML here, pod by pod, as the kubelet would",
        description="Run each Job in FILE on this machine: every pod (each index of an Indexed Job, with "
        "$JOB_COMPLETION_INDEX set) runs its veil command with the container's env and $(VAR) "
        "expanded, one after the other, in file order; stops at the first failure. Other kinds "
        "(Namespace, PVC, Pod, Deployment) are skipped. Render with local paths first, e.g. "
        "`veil k8s render --scenario batch --shards 4 --dataset ~/fddb --weights W --results-dir runs "
        "--existing-pvc --no-namespace --out job.yaml`.",
    )
    rl.add_argument("file", help="rendered YAML (- for stdin)")
    rl.add_argument("--dry-run", action="store_true", help="print the commands; run nothing")
    rl.set_defaults(func=_run_local)

    st = ksub.add_parser(
        "stage",
        help="copy a dataset from any fsspec URL (s3://, gs://, file://, a path) into a directory",
        description="Copy every file under URL into DEST with the same layout, skipping files already there "
        "with the same size (an interrupted copy resumes). Run it in a pod that mounts the data "
        "volume (veil k8s render --scenario batch --loader). s3:// needs s3fs, gs:// needs gcsfs.",
    )
    st.add_argument("url", help="source, e.g. s3://bucket/fddb or /mnt/fddb")
    st.add_argument("dest", help="destination directory, e.g. /data/fddb")
    st.add_argument("--overwrite", action="store_true", help="copy files even if present with the same size")
    st.set_defaults(func=_stage)

    pr = ksub.add_parser(
        "provision",
        help="make the data volume, a workspace or a Triton server with the NetApp DataOps Toolkit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Call the NetApp DataOps Toolkit for Kubernetes (pip install netapp-dataops-k8s; needs a "
        "cluster with NetApp Trident or the BeeGFS CSI driver and a kubeconfig) as the reference "
        "design does. --dry-run prints the Python call and the toolkit's own command line instead.",
        epilog="examples:\n"
        "  veil k8s provision volume --name inference-data --size 50Gi --dry-run\n"
        "  veil k8s provision workspace --name veil --size 10Gi --gpus 1\n"
        "  veil k8s provision volume --name veil-model-repo --size 1Gi\n"
        "  veil k8s render --scenario triton --export | kubectl apply -f -\n"
        "  veil k8s provision triton --name veil --model-pvc veil-model-repo",
    )
    psub = pr.add_subparsers(dest="what", metavar="WHAT", required=True)
    pv = psub.add_parser("volume", help="a persistent volume claim (toolkit: create volume)")
    pv.add_argument("--name", default=_D.pvc, help="claim name (default: %(default)s)")
    pv.add_argument("--size", required=True, help="e.g. 50Gi")
    pw = psub.add_parser("workspace", help="a JupyterLab workspace in the veil image (toolkit: create jupyterlab)")
    pw.add_argument("--name", default="veil", help="workspace name (default: %(default)s)")
    pw.add_argument("--size", default=_D.workspace_size, help="workspace volume size (default: %(default)s)")
    pw.add_argument("--image", default=_D.image, help="workspace image (default: %(default)s)")
    pw.add_argument("--pvc", default=_D.pvc, help="data volume to mount at /data (default: %(default)s)")
    pw.add_argument("--no-data", action="store_true", help="don't mount the data volume at /data")
    pt = psub.add_parser("triton", help="a Triton server on a model repository volume (toolkit: create triton-server)")
    pt.add_argument("--name", default="veil", help="server name (default: %(default)s)")
    pt.add_argument(
        "--model-pvc", default=_D.model_pvc, help="claim holding the model repository (default: %(default)s)"
    )
    pt.add_argument("--image", default=_D.triton_image, help="Triton image (default: %(default)s)")
    for q in (pv, pw, pt):
        q.add_argument("--namespace", default=_D.namespace, help="namespace (default: %(default)s)")
        q.add_argument("--dry-run", action="store_true", help="print the toolkit call and command line; do nothing")
    for q in (pv, pw):
        q.add_argument("--storage-class", help="Trident/BeeGFS StorageClass (default: the cluster's default)")
    for q in (pw, pt):
        q.add_argument("--gpus", type=int, default=0, help="NVIDIA GPUs (default: %(default)s)")
        q.add_argument("--cpu", help="CPUs to reserve, e.g. 2")
        q.add_argument("--memory", help="memory to reserve, e.g. 8Gi")
        q.add_argument("--load-balancer", action="store_true", help="LoadBalancer Service instead of NodePort")
    pr.set_defaults(func=_provision)


def options_from_args(args: argparse.Namespace) -> k8s.Options:
    """Map ``veil k8s render`` flags onto :class:`veil.deploy.k8s.Options`."""
    return k8s.Options(
        namespace=args.namespace,
        pvc=args.pvc,
        pvc_size=args.pvc_size,
        storage_class=args.storage_class,
        access_mode=args.access_mode,
        create_namespace=not args.no_namespace,
        create_pvc=not args.existing_pvc,
        image=args.image,
        gpus=args.gpus,
        cpu=args.cpu,
        memory=args.memory,
        dataset=args.dataset,
        weights=args.weights,
        noise_dir=args.noise_dir,
        results_dir=args.results_dir,
        alpha=args.alpha,
        noisy=args.noisy,
        shards=args.shards,
        parallelism=args.parallelism,
        run_id=args.run_id,
        triton_server=args.triton_server,
        triton_image=args.triton_image,
        model_pvc=args.model_pvc,
        service_type=args.service_type,
        workspace_size=args.workspace_size,
        jupyter_secret=args.jupyter_secret,
        triton_url=args.triton_url,
        noise_sha256=args.noise_sha256,
        noise_key_secret=args.noise_key_secret,
        expose_metrics=args.expose_metrics,
        client_namespace=args.client_namespace,
    )


def _render(args: argparse.Namespace) -> int:
    if (args.merge or args.loader) and args.scenario != "batch":
        raise ValueError("--merge and --loader are for --scenario batch")
    if args.merge and args.loader:
        raise ValueError("give --merge or --loader, not both")
    if args.export and args.scenario != "triton":
        raise ValueError("--export is for --scenario triton")
    opts = options_from_args(args)
    part = "merge" if args.merge else "loader" if args.loader else "export" if args.export else "all"
    docs = k8s.render_scenario(args.scenario, opts, part)
    for warning in k8s.exposure_warnings(opts, args.scenario):
        print(f"warning: {warning}", file=sys.stderr)
    for version in args.validate:
        k8s.validate(docs, version)
    argv = ["veil", "k8s", "render"] + (sys.argv[3:] if sys.argv[1:3] == ["k8s", "render"] else [])
    text = k8s.to_yaml(docs, header=f"Rendered by: {shlex.join(argv)}\nApply with: kubectl apply -f <this file>")
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        kinds = ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
        print(f"wrote {args.out}: {kinds}", file=sys.stderr)
    return 0


def _validate(args: argparse.Namespace) -> int:
    try:
        import kubernetes_validate.utils as kvu
    except ImportError as exc:
        raise RuntimeError("kubernetes-validate is not installed: pip install 'veil[k8s]'") from exc
    versions = args.k8s_version or [kvu.latest_version()]
    n = 0
    for name in args.files:
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
        docs = [d for d in yaml.safe_load_all(text) if d]
        for version in versions:
            k8s.validate(docs, version)
        problems = [v for d in docs for v in restricted_violations(d) + hardening_violations(d)]
        if problems:
            raise RuntimeError(
                f"{name}: {len(problems)} Pod Security (restricted) or hardening problem(s): "
                + "; ".join(problems[:10])
            )
        n += len(docs)
    print(f"{n} documents valid for Kubernetes {', '.join(versions)} and the Pod Security restricted profile")
    return 0


def _run_local(args: argparse.Namespace) -> int:
    from veil.deploy.local import pod_runs, run_pod

    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    jobs = [d for d in docs if d.get("kind") == "Job"]
    if not jobs:
        raise ValueError(f"{args.file} holds no Job (render --scenario batch)")
    for d in docs:
        if d.get("kind") != "Job":
            print(f"skipped {d.get('kind')}/{d.get('metadata', {}).get('name')} (not a Job)", file=sys.stderr)
    for job in jobs:
        for pod in pod_runs(job):
            print(f"$ {pod.shell()}", flush=True)
            if not args.dry_run and run_pod(pod) != 0:
                raise RuntimeError(
                    f"Job {pod.job}"
                    + (f" index {pod.index}" if pod.index is not None else "")
                    + " failed; with backoffLimit 5 Kubernetes would retry it"
                )
    return 0


def _stage(args: argparse.Namespace) -> int:
    from veil.deploy.stage import stage

    files, nbytes = stage(args.url, args.dest, overwrite=args.overwrite)
    print(f"copied {files} files ({nbytes / 1e6:.1f} MB) from {args.url} to {args.dest}")
    return 0


def dataops_call_from_args(args: argparse.Namespace) -> dataops.DataOpsCall:
    """Map ``veil k8s provision …`` flags onto one DataOps Toolkit call."""
    if args.what == "volume":
        return dataops.volume_call(args.name, args.size, args.namespace, args.storage_class)
    if args.what == "workspace":
        return dataops.workspace_call(
            args.name,
            args.size,
            args.namespace,
            args.image,
            None if args.no_data else args.pvc,
            storage_class=args.storage_class,
            gpus=args.gpus,
            cpu=args.cpu,
            memory=args.memory,
            load_balancer=args.load_balancer,
        )
    return dataops.triton_call(
        args.name,
        args.model_pvc,
        args.namespace,
        args.image,
        gpus=args.gpus,
        cpu=args.cpu,
        memory=args.memory,
        load_balancer=args.load_balancer,
    )


def _provision(args: argparse.Namespace) -> int:
    call = dataops_call_from_args(args)
    if getattr(args, "load_balancer", False):
        what = "Triton (no authentication, no TLS)" if args.what == "triton" else "JupyterLab (token only)"
        print(
            f"warning: --load-balancer exposes {what} outside the cluster; prefer kubectl port-forward, "
            "or put TLS and access control in front",
            file=sys.stderr,
        )
    if args.dry_run:
        print(f"# Python (netapp-dataops-k8s):\n{call.python()}\n# the toolkit's command line:\n{call.shell()}")
        return 0
    dataops.execute(call)
    return 0
