"""Start and stop the real Triton Inference Server bundled with PyPI's ``nvidia-pytriton``.

The wheel ships ``tritonserver`` (python backend only) plus its shared libraries and one python
backend stub per Python version. :class:`TritonServer` assembles a private backend directory
(symlinks: the backend library and the stub matching *this* interpreter), sets the environment the
stub needs (this interpreter's ``libpython`` first on ``LD_LIBRARY_PATH``, its ``bin`` first on
``PATH`` so the embedded Python finds this virtualenv's numpy and torch), binds every endpoint to
loopback unless told otherwise, waits until the models are ready, and stops the whole process
group on exit, so nothing is left behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO


class ServerError(RuntimeError):
    """The server could not be found, started, or did not become ready."""


def pytriton_dist() -> Path:
    """The ``tritonserver`` distribution inside the installed nvidia-pytriton package."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("nvidia-pytriton is not installed; `pip install nvidia-pytriton` bundles tritonserver")
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise ServerError(f"no tritonserver binary in {dist}/bin (unexpected nvidia-pytriton layout)")
    return dist


def _libs_dir(dist: Path) -> Path:
    """The wheel's bundled shared libraries (``nvidia_pytriton.libs``, beside the package)."""
    for cand in (dist.parent.parent / "nvidia_pytriton.libs", dist / "external_libs"):
        if cand.is_dir():
            return cand
    raise ServerError(f"cannot find nvidia_pytriton.libs next to {dist.parent}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that are free right now on ``host`` (a server's HTTP, gRPC and
    metrics ports are picked together: one at a time could return the same port twice)."""
    return _pick_ports(host, *([None] * count))


def _pick_ports(host: str, *wanted: int | None) -> list[int]:
    """The given ports, with free ones for the rest: all sockets held open together, so the
    picks are distinct (picking one at a time could return the same port twice)."""
    socks = []
    try:
        ports = []
        for w in wanted:
            if w:
                ports.append(w)
                continue
            s = socket.socket()
            socks.append(s)
            s.bind((host, 0))
            ports.append(s.getsockname()[1])
        return ports
    finally:
        for s in socks:
            s.close()


def unsupported_reason() -> str | None:
    """Why the bundled server cannot run on this platform, or None if it should."""
    if not sys.platform.startswith("linux"):
        return f"the tritonserver bundled with nvidia-pytriton runs on Linux only (this is {sys.platform})"
    try:
        dist = pytriton_dist()
    except ServerError as exc:
        return str(exc)
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if not (dist / "python_backend_stubs" / ver / "triton_python_backend_stub").is_file():
        return f"nvidia-pytriton ships no python backend stub for Python {ver}"
    libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    try:
        major, minor = (int(x) for x in libc.split()[1].split(".")[:2])
        if (major, minor) < (2, 35):
            return f"tritonserver needs glibc >= 2.35 (this is {libc})"
    except (IndexError, ValueError):
        pass
    return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def port_in_use(host: str, port: int) -> bool:
    """True if something already listens on (or holds) ``host:port``: binding it fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        # SO_REUSEADDR: connections of a stopped server lingering in TIME_WAIT don't count as use
        # (on Linux a port someone listens on still refuses the bind).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


#: Triton APIs that only an operator needs: changing log settings, registering shared-memory
#: regions (a client could register the server's own and read it back), loading/unloading models
#: and listing the repository, tracing, statistics. Restricted by default behind a header key.
RESTRICTED_APIS = ("shared-memory", "model-repository", "logging", "trace", "statistics")
#: The request header that carries the admin key for the restricted APIs.
ADMIN_HEADER = "veil-admin-key"


def restricted_api_args(key: str) -> list[str]:
    """``tritonserver`` flags restricting :data:`RESTRICTED_APIS` on HTTP and gRPC to requests with
    header ``veil-admin-key: <key>`` (gRPC: ``triton-grpc-protocol-veil-admin-key``); inference,
    health, metadata and model config stay open."""
    apis = ",".join(RESTRICTED_APIS)
    return [
        f"--http-restricted-api={apis}:{ADMIN_HEADER}={key}",
        f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={key}",
    ]


def _kill_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; True if the group had members to receive it."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class TritonServer:
    """A ``tritonserver`` process serving a model repository; use as a context manager.

    Ports default to free ones; ``host`` defaults to loopback; ``models`` limits which models
    are loaded (each python-backend model is a process, so fewer start faster). ``stop()`` (also
    run on exit of the ``with`` block) sends SIGTERM, waits, then kills the process group if needed.

    Locked down by default: the operator APIs (:data:`RESTRICTED_APIS`) answer only requests
    carrying :attr:`admin_key` (random per start) in header ``veil-admin-key``; metrics are off
    unless ``metrics=True``; its shared-memory regions are made mode 0600 once it is ready.
    Before starting, the ports must be free; once ready, the answering server must report this
    start's unique id, so a server already on the port is never taken for ours.
    """

    def __init__(
        self,
        model_repository: str | Path,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_file: str | Path | None = None,
        log_verbose: int = 0,
        models: list[str] | None = None,
        exit_timeout: int = 5,
        metrics: bool = False,
        restricted: bool = True,
        admin_key: str | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise ServerError(
                f"model repository {self.model_repository} does not exist; "
                f"create it with `veil export-triton --out {shlex.quote(str(model_repository))}`"
            )
        self.host = host
        self.http_port, self.grpc_port, self.metrics_port = _pick_ports(host, http_port, grpc_port, metrics_port)
        self.log_file = Path(log_file) if log_file else None
        self.log_verbose = log_verbose
        self.models = list(models) if models else None  # None: every model in the repository
        # On stop, Triton waits this long for in-flight requests and open client connections
        # (idle keep-alive connections would otherwise hold it for its default 30 s).
        self.exit_timeout = int(exit_timeout)
        self.metrics = bool(metrics)
        self.restricted = bool(restricted)
        self.admin_key = admin_key or secrets.token_urlsafe(24)
        self.server_id = f"veil-{secrets.token_hex(8)}"  # what /v2 must report for the server to be ours
        self.process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._log: IO[bytes] | None = None

    # -- addresses -----------------------------------------------------------------------------
    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    def url(self, protocol: str = "http") -> str:
        return self.http_url if protocol == "http" else self.grpc_url

    # -- life cycle ----------------------------------------------------------------------------
    def command(self) -> list[str]:
        """The ``tritonserver`` command line (after :meth:`_prepare`)."""
        assert self._workdir is not None
        shm = self._shm_prefix
        return (
            [
                str(pytriton_dist() / "bin" / "tritonserver"),
                f"--model-repository={self.model_repository}",
                f"--backend-directory={self._workdir / 'backends'}",
                f"--http-address={self.host}",
                f"--http-port={self.http_port}",
                f"--grpc-address={self.host}",
                f"--grpc-port={self.grpc_port}",
                f"--metrics-address={self.host}",
                f"--metrics-port={self.metrics_port}",
                f"--backend-config=python,shm-region-prefix-name={shm}",
                "--backend-config=python,shm-default-byte-size=4194304",
                "--backend-config=python,shm-growth-byte-size=4194304",
                f"--exit-timeout-secs={self.exit_timeout}",
                "--strict-readiness=true",
                "--exit-on-error=true",
                "--disable-auto-complete-config",
                f"--id={self.server_id}",
                f"--allow-metrics={'true' if self.metrics else 'false'}",
                f"--log-verbose={self.log_verbose}",
            ]
            + (restricted_api_args(self.admin_key) if self.restricted else [])
            + self._model_args()
        )

    def _model_args(self) -> list[str]:
        if not self.models:
            return []
        missing = [m for m in self.models if not (self.model_repository / m / "config.pbtxt").is_file()]
        if missing:
            raise ServerError(f"model(s) {missing} not in {self.model_repository}")
        return ["--model-control-mode=explicit"] + [f"--load-model={m}" for m in self.models]

    def environment(self) -> dict[str, str]:
        """The server's environment: this interpreter's libpython and virtualenv come first."""
        env = os.environ.copy()
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        parts = [libdir, str(_libs_dir(pytriton_dist())), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in parts if p)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    def _prepare(self) -> Path:
        """A fresh working directory with this interpreter's backend stub; returned (also ``_workdir``)."""
        dist = pytriton_dist()
        ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = dist / "python_backend_stubs" / ver / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServerError(f"nvidia-pytriton ships no python backend stub for Python {ver}")
        self._workdir = Path(tempfile.mkdtemp(prefix="veil-triton-"))
        # The python backend's shared-memory regions are /dev/shm/<prefix>*: unique per start, so
        # stop() can remove exactly this server's regions.
        self._shm_prefix = f"veil{os.getpid()}-{secrets.token_hex(4)}"
        pyb = self._workdir / "backends" / "python"
        pyb.mkdir(parents=True)
        for f in (dist / "backends" / "python").iterdir():
            if f.is_file():
                (pyb / f.name).symlink_to(f)
        (pyb / "triton_python_backend_stub").symlink_to(stub)
        return self._workdir

    def start(self, timeout: float = 120.0) -> TritonServer:
        """Start the server and wait until it and all its models are ready."""
        if self.process is not None and self.process.poll() is None:
            return self
        ports = [("HTTP", self.http_port), ("gRPC", self.grpc_port)] + (
            [("metrics", self.metrics_port)] if self.metrics else []
        )
        busy = [f"{what} port {port}" for what, port in ports if port_in_use(self.host, port)]
        if busy:
            raise ServerError(
                f"{' and '.join(busy)} on {self.host} already in use (another server?); stop it or choose other ports"
            )
        workdir = self._prepare()
        log_path = self.log_file or (workdir / "tritonserver.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - held open for the server's life, closed by stop()
        self._log_path = log_path
        try:
            self.process = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=0o077,
            )
            self.wait_ready(timeout)
            self._private_regions()
        except BaseException:
            self.stop()
            raise
        return self

    def _private_regions(self) -> None:
        """Make this server's shared-memory regions (/dev/shm/<prefix>*) mode 0600.

        The python backend creates them with mode 0644 whatever the umask, so any local user could
        read the activations passing through them; they exist once the models are loaded (ready).
        """
        for f in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
            try:
                f.chmod(0o600)
            except OSError:
                pass

    def is_ready(self) -> bool:
        """True when the HTTP endpoint answers ``/v2/health/ready`` with 200 (server and models ready)."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def answering_id(self) -> str | None:
        """The id of the server answering on our HTTP port (``GET /v2``), or None if none answers."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2", timeout=2) as r:
                return json.loads(r.read()).get("name")
        except (urllib.error.URLError, OSError, ValueError, AttributeError):
            return None

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until *this* server is ready: our process alive, ready, and reporting our id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ServerError(f"tritonserver exited (status {code}) before it was ready:\n{self.log_tail()}")
            if self.is_ready():
                found = self.answering_id()
                if found == self.server_id and self.process.poll() is None:
                    return
                raise ServerError(
                    f"a server answers on {self.http_url}, but it is not the one started here "
                    f"(it reports id {found!r}, ours is {self.server_id!r})"
                )
            time.sleep(0.25)
        raise ServerError(f"tritonserver was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = Path(self._log_path).read_text(errors="replace")
        except (AttributeError, OSError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float | None = None) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL to its process group); return its exit status.

        ``timeout`` defaults to the server's own exit timeout plus 15 s for unloading models.
        """
        timeout = self.exit_timeout + 15.0 if timeout is None else timeout
        code = None
        p = self.process
        if p is not None:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            code = p.poll()  # None: it did not exit within the timeout
            # The python backend stubs live in the server's process group: after a clean exit give
            # them a moment to finish their own clean-up, then make sure none survive.
            deadline = time.monotonic() + 5.0
            while code is not None and _group_alive(p.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            _kill_group(p.pid, signal.SIGKILL)
            code = p.wait() if code is None else code
            self.process = None
        prefix = getattr(self, "_shm_prefix", None)
        if prefix:
            for f in Path("/dev/shm").glob(f"{prefix}*"):
                f.unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
