"""The Pod Security Standards' "restricted" profile as a checker, plus veil's own hardening rules.

Written from the controls table of https://kubernetes.io/docs/concepts/security/pod-security-standards/
(the "baseline" controls, which "restricted" includes, then the "restricted" ones), for the pod
templates veil renders (Pods, Jobs, Deployments). Why a checker of our own: the admission
controller that enforces these rules runs only in a cluster; this lets tests and
``veil k8s validate`` refuse a manifest that a ``pod-security.kubernetes.io/enforce: restricted``
namespace would reject, before it reaches one. :func:`hardening_violations` adds what the
profile leaves out but veil requires (read-only root filesystem, resources, no API token).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: Baseline: capabilities a container may add. Restricted allows only NET_BIND_SERVICE.
_RESTRICTED_ADD = {"NET_BIND_SERVICE"}
#: Baseline: the only volume types restricted pods may use.
_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
_SECCOMP_OK = {"RuntimeDefault", "Localhost"}
_APPARMOR_OK = {"RuntimeDefault", "Localhost"}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a Pod, or the pod template of a Job/Deployment/…; None for other kinds."""
    if doc.get("kind") == "Pod":
        return doc.get("spec", {})
    if doc.get("kind") == "CronJob":
        return doc.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    return doc.get("spec", {}).get("template", {}).get("spec")


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(field, []) or []:
            yield f"{field}[{c.get('name')}]", c


def restricted_violations(doc: dict[str, Any]) -> list[str]:
    """Every rule of the "restricted" profile (baseline included) that the pod of ``doc`` breaks."""
    spec = pod_spec(doc)
    if spec is None:
        return []
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    out: list[str] = []
    psc = spec.get("securityContext", {}) or {}

    # -- baseline ----------------------------------------------------------------------------
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            out.append(f"{name}: {host} must be unset or false (host namespaces)")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append(f"{name}: securityContext.windowsOptions.hostProcess must not be true")
    for v in spec.get("volumes", []) or []:
        kinds = [k for k in v if k != "name"]
        if "hostPath" in kinds:
            out.append(f"{name}: volume {v.get('name')} is a hostPath (forbidden)")
        bad = [k for k in kinds if k not in _VOLUME_TYPES]
        if bad:
            out.append(f"{name}: volume {v.get('name')} has type {bad[0]}, not one of {sorted(_VOLUME_TYPES)}")
    for sysctl in psc.get("sysctls", []) or []:
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            out.append(f"{name}: sysctl {sysctl.get('name')} is not in the safe set")
    out += _selinux(name, psc)
    out += _apparmor(name, psc, doc)
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in _SECCOMP_OK:
        out.append(f"{name}: pod seccompProfile.type is {pod_seccomp}, not RuntimeDefault or Localhost")
    pod_nonroot = psc.get("runAsNonRoot") is True
    if psc.get("runAsUser") == 0:
        out.append(f"{name}: pod runAsUser is 0 (root)")

    for where, c in _containers(spec):
        sc = c.get("securityContext", {}) or {}
        w = f"{name} {where}"
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{w}: windowsOptions.hostProcess must not be true")
        if sc.get("privileged"):
            out.append(f"{w}: privileged must be unset or false")
        for port in c.get("ports", []) or []:
            if port.get("hostPort") not in (None, 0):
                out.append(f"{w}: hostPort {port.get('hostPort')} (host ports are forbidden)")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{w}: procMount must be Default")
        out += _selinux(w, sc)
        out += _apparmor(w, sc)
        caps = sc.get("capabilities", {}) or {}
        # -- restricted ----------------------------------------------------------------------
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{w}: allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot") is False or (not pod_nonroot and sc.get("runAsNonRoot") is not True):
            out.append(f"{w}: runAsNonRoot must be true (in the container or the pod)")
        if sc.get("runAsUser") == 0:
            out.append(f"{w}: runAsUser is 0 (root)")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is None and pod_seccomp is None:
            out.append(f"{w}: seccompProfile.type must be RuntimeDefault or Localhost (in the container or the pod)")
        elif seccomp is not None and seccomp not in _SECCOMP_OK:
            out.append(f"{w}: seccompProfile.type is {seccomp}, not RuntimeDefault or Localhost")
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{w}: capabilities.drop must include ALL")
        extra = set(caps.get("add") or []) - _RESTRICTED_ADD
        if extra:
            out.append(f"{w}: capabilities.add may only hold NET_BIND_SERVICE, has {sorted(extra)}")
    return out


def _selinux(where: str, sc: dict[str, Any]) -> list[str]:
    opts = sc.get("seLinuxOptions") or {}
    out = []
    if opts.get("type", "") not in _SELINUX_TYPES:
        out.append(f"{where}: seLinuxOptions.type {opts.get('type')} is not allowed")
    if opts.get("user") or opts.get("role"):
        out.append(f"{where}: seLinuxOptions.user/role must be unset")
    return out


def _apparmor(where: str, sc: dict[str, Any], doc: dict[str, Any] | None = None) -> list[str]:
    t = (sc.get("appArmorProfile") or {}).get("type")
    out = []
    if t is not None and t not in _APPARMOR_OK:
        out.append(f"{where}: appArmorProfile.type {t} is not allowed (RuntimeDefault or Localhost)")
    if doc is not None:
        meta = (
            doc.get("spec", {}).get("template", {}).get("metadata", {})
            if doc.get("kind") != "Pod"
            else doc.get("metadata", {})
        )
        for k, v in (meta.get("annotations") or {}).items():
            if (
                k.startswith("container.apparmor.security.beta.kubernetes.io/")
                and v != "runtime/default"
                and not str(v).startswith("localhost/")
            ):
                out.append(f"{where}: AppArmor annotation {k}={v} is not allowed")
    return out


def hardening_violations(doc: dict[str, Any]) -> list[str]:
    """veil's rules beyond the profile: read-only root filesystem, CPU and memory requests and
    limits on every container, no service-account token in the pod."""
    spec = pod_spec(doc)
    if spec is None:
        return []
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    out = []
    if spec.get("automountServiceAccountToken") is not False:
        out.append(f"{name}: automountServiceAccountToken must be false")
    for where, c in _containers(spec):
        w = f"{name} {where}"
        if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True:
            out.append(f"{w}: readOnlyRootFilesystem must be true")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(kind) or {}):
                    out.append(f"{w}: no {r} {kind[:-1]}")
    return out
