"""Run a rendered Job's pods on this machine, as the kubelet would: the container's env, ``$(VAR)``
expansion, ``JOB_COMPLETION_INDEX`` for each completion of an Indexed Job, and ``veil`` as entrypoint.

Why: to try a batch run (and its shard/merge plumbing) before a cluster is at hand, with the very
commands the manifests hold. Render with local paths (``--dataset``, ``--weights``, ``--results-dir``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

from veil.deploy.k8s import Manifest

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of ``$(VAR)`` in command and args (``$$`` escapes; unknown names stay as written)."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, arg)


@dataclass(frozen=True)
class PodRun:
    """One pod of a Job: the veil arguments it runs and the env it runs them with."""

    job: str
    index: int | None
    argv: list[str]
    env: dict[str, str]

    def shell(self) -> str:
        prefix = f"JOB_COMPLETION_INDEX={self.index} " if self.index is not None else ""
        return prefix + shlex.join(["veil", *self.argv])


def pod_runs(job: Manifest) -> list[PodRun]:
    """The pods a Job would start: one, or ``completions`` for an Indexed Job, with their veil arguments.

    Only containers whose entrypoint is the image's ``veil`` (no ``command``) can be run here.
    """
    if job.get("kind") != "Job":
        raise ValueError(f"{job.get('kind')}/{job.get('metadata', {}).get('name')} is not a Job")
    spec = job["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    if "command" in container:
        raise ValueError(f"Job {job['metadata']['name']}: container runs {container['command']}, not veil")
    base = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
    indexed = spec.get("completionMode") == "Indexed"
    out = []
    for index in range(spec.get("completions", 1)) if indexed else [None]:
        env = dict(base)
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        out.append(PodRun(job["metadata"]["name"], index, [expand(a, env) for a in container["args"]], env))
    return out


def run_pod(pod: PodRun) -> int:
    """Run one pod's command in a fresh process (like a container), output streamed; return its exit status."""
    env = {**os.environ, **pod.env}
    return subprocess.run([sys.executable, "-m", "veil", *pod.argv], env=env, check=False).returncode
