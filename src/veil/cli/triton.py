"""``veil export-triton``, ``veil serve`` and ``veil infer``: the tail on Triton, the head here."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import cv2
from tqdm import tqdm

from veil.cli.errors import CLIError
from veil.cli.options import (
    add_model_args,
    add_model_choice,
    add_noise_args,
    attach_noise,
    check_noise_args,
    check_unique_stems,
    create_model,
    pipeline_from_args,
)
from veil.jsonio import write_json

DEFAULT_REPO = "triton-repo"
#: The ``veil infer`` parser, kept to print rerun commands that repeat every option given.
_INFER_PARSER: argparse.ArgumentParser | None = None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-triton",
        help="write a Triton model repository serving a split model's tail",
        description="Export the tail of --model at --split (default: FaceBoxes at rdcl) as Triton models "
        "<prefix>_base and <prefix>_noisy, where <prefix> is face_detection for FaceBoxes at rdcl (the reference "
        "design's names) and MODEL_SPLIT otherwise (same weights; *_fp16 twins take an FP16 INPUT_0; input, "
        "outputs and the activation bound follow the model's config) in three forms, one repository each: "
        "OUT/python (python backend; what `veil serve` runs here), OUT/onnx (onnxruntime backend) "
        "and OUT/torchscript (pytorch backend) for stock Triton containers. Every exported file is "
        "checked against the in-process tail (max abs error <= 1e-4).",
    )
    p.add_argument("--out", default=DEFAULT_REPO, help="output directory (default: %(default)s)")
    p.add_argument(
        "--format",
        choices=["all", "python", "onnx", "torchscript"],
        default="all",
        help="which form(s) to write (default: %(default)s)",
    )
    p.add_argument("--max-batch-size", type=int, default=8, help="Triton max_batch_size (default: %(default)s)")
    add_model_choice(p)
    p.set_defaults(func=run_export)

    p = sub.add_parser(
        "serve",
        help="run the Triton Inference Server bundled with nvidia-pytriton on a model repository",
        description="Start the real tritonserver from the nvidia-pytriton wheel on REPO (REPO/python if REPO "
        "holds the forms written by `veil export-triton`). Listens on 127.0.0.1 unless --host says "
        "otherwise. Locked down by default: the operator APIs (shared memory, model repository and "
        "control, logging, trace, statistics) need a random admin key (see --admin-key-file), metrics "
        "are off (--metrics), and the ports must be free. Stops cleanly on Ctrl-C or SIGTERM.",
    )
    p.add_argument(
        "--model-repository", default=DEFAULT_REPO, metavar="REPO", help="model repository (default: %(default)s)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s; 0.0.0.0 exposes the server to the network)",
    )
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: %(default)s)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default: %(default)s)")
    p.add_argument(
        "--metrics",
        action="store_true",
        help="serve Prometheus metrics on --metrics-port (default: off; they reveal load and timing)",
    )
    p.add_argument(
        "--admin-key-file",
        metavar="FILE",
        help="write the random admin key for the restricted operator APIs here (mode 0600); send it as "
        "header 'veil-admin-key' (gRPC: 'triton-grpc-protocol-veil-admin-key') (default: not written, so those "
        "APIs are closed to everyone)",
    )
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="load only this model (repeatable; default: all in the repository)",
    )
    p.add_argument("--log-file", help="server log file (default: a temporary file, tail shown on failure)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness (default: %(default)s)")
    p.add_argument(
        "--exit-timeout",
        type=int,
        default=5,
        help="on stop, seconds to let in-flight requests finish (default: %(default)s)",
    )
    p.set_defaults(func=run_serve)

    p = sub.add_parser(
        "infer",
        help="detect faces (or classify, --model NAME) with the tail on a Triton server; only the activation is sent",
        description="Run preprocessing, the head and (with --noisy) the obfuscation here; send only the "
        "activation, as binary tensor data, to the Triton server at --url; post-process the returned "
        "tail outputs here. Writes IMAGE_NAME.jpg (boxes), IMAGE_NAME.json and, when a decoder is "
        "available, IMAGE_NAME.sent.jpg: a reconstruction of what was sent.",
    )
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--url", help="server address host:port (default: 127.0.0.1:8000 for http, :8001 for grpc)")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http", help="(default: %(default)s)")
    p.add_argument("--fp16", action="store_true", help="send the activation as FP16 (half the bytes)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--min-score", type=float, default=0.5, help="draw boxes at or above this score (default: %(default)s)"
    )
    p.add_argument(
        "--decoder",
        help="decoder for the reconstruction of what was sent (default: $VEIL_DECODER, the one "
        "`veil train-decoder` cached, then the one shipped with veil)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries (with doubling back-off) when the server is unreachable or does not answer in "
        "time (default: %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="deadline in seconds for each request; a hung server counts as unreachable (default: %(default)s)",
    )
    add_model_choice(p, weights=False)
    add_model_args(p)
    add_noise_args(p, seed=False)
    p.set_defaults(func=run_infer)
    global _INFER_PARSER
    _INFER_PARSER = p


def run_export(args: argparse.Namespace) -> int:
    from veil.serving.repository import FORMATS, all_models, served_prefix, write_repository

    model = create_model(args)
    formats = FORMATS if args.format == "all" else (args.format,)
    t0 = time.monotonic()
    report = write_repository(model, args.out, model.weights_sha256, formats, args.max_batch_size)
    for fmt, repo in report.repositories.items():
        print(f"{fmt:12s} {repo}")
    for k, v in report.max_error.items():
        print(f"check {k}: max |exported - in-process| = {v:.2e}")
    serve = shlex.join(["veil", "serve", "--model-repository", args.out])
    print(f"models: {', '.join(all_models(served_prefix(model)))} ({model.split_point})")
    print(f"wrote {args.out} in {time.monotonic() - t0:.1f} s; serve it with `{serve}`")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from veil.serving.repository import resolve_repository
    from veil.serving.server import ServerError, TritonServer, unsupported_reason

    why = unsupported_reason()
    if why:
        raise CLIError(f"cannot run the bundled tritonserver here: {why}. Use the stock container (docs/serving.md)")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {args.host}: anyone who reaches these ports can send inference requests "
            "(Triton has no authentication and no TLS here); put it behind TLS and access control",
            file=sys.stderr,
        )
    repo = resolve_repository(args.model_repository, "python")
    server = TritonServer(
        repo,
        args.host,
        args.http_port,
        args.grpc_port,
        args.metrics_port,
        log_file=args.log_file,
        models=args.models,
        exit_timeout=args.exit_timeout,
        metrics=args.metrics,
    )
    if args.admin_key_file:
        fd = os.open(args.admin_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(server.admin_key + "\n")
    stopping = {"signal": None}

    def on_signal(signum, _frame):
        stopping["signal"] = signum
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"starting tritonserver on {repo} ...", file=sys.stderr)
        try:
            server.start(args.timeout)
        except ServerError as exc:
            raise CLIError(str(exc)) from exc
        process = server.process
        assert process is not None  # start() returned: the server runs
        metrics = server.metrics_url if server.metrics else "off"
        print(f"ready: HTTP {server.http_url}  gRPC {server.grpc_url}  metrics {metrics}  (pid {process.pid})")
        print("press Ctrl-C to stop", file=sys.stderr)
        sys.stdout.flush()
        status = process.wait()
        print(f"tritonserver exited with status {status}:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ignore further signals while stopping, so a second Ctrl-C cannot orphan the server.
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        print("stopping tritonserver ...", file=sys.stderr)
        code = server.stop()
        note = (
            ""
            if code == 0
            else (
                f" (tritonserver status {code}: it had to cut open client connections or requests after --exit-timeout)"
            )
        )
        print(f"stopped{note}", file=sys.stderr)
        return 0
    finally:
        server.stop()
        for s, h in old.items():
            signal.signal(s, h)


def run_infer(args: argparse.Namespace) -> int:
    from veil.postprocess import Classification
    from veil.serving.client import TritonDetector
    from veil.viz import draw_boxes

    check_noise_args(args)
    check_unique_stems(args.images)
    det = pipeline_from_args(args)  # the head runs here; the tail on the server
    meta = attach_noise(args, det)[0] if args.noisy else None
    noise = (
        None
        if meta is None
        else {k: meta.get(k) for k in ("alpha", "family", "weights_sha256", "split_point", "noise_mode")}
    )
    decoder = _decoder(args.decoder, det.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = TritonDetector(det, args.url, args.protocol, fp16=args.fp16, retries=args.retries, timeout=args.timeout)
    bar = tqdm(
        total=len(args.images), desc=f"infer ({client.model} @ {client.url})", unit="img", disable=len(args.images) < 2
    )

    def on_result(_i, r):
        bar.update(1)
        if not r.ok:
            tqdm.write(f"not processed: {r.name}: {r.error}", file=sys.stderr)
            return
        stem = Path(r.name).stem
        if isinstance(r.boxes, Classification):
            answer: dict = {
                "label": r.boxes.label,
                "probabilities": [round(float(p), 4) for p in r.boxes.probabilities],
            }
        else:
            cv2.imwrite(str(out / f"{stem}.jpg"), draw_boxes(r.image, r.boxes, args.min_score))
            rows = [{"box": [round(float(v), 2) for v in b[:4]], "score": round(float(b[4]), 4)} for b in r.boxes]
            answer = {"detections": rows}
        sent = {
            "tensor": "INPUT_0",
            "shape": list(r.activation.shape),
            "dtype": str(r.activation.dtype).split(".")[-1],
            "bytes": r.activation.numel() * r.activation.element_size(),
        }
        record = {
            "image": r.name,
            "server": client.url,
            "protocol": client.protocol,
            "model": client.model,
            "sent": sent,
            "noise": noise,
            **answer,
        }
        if decoder is not None:
            from veil.privacy.decoders import reconstruct

            cv2.imwrite(str(out / f"{stem}.sent.jpg"), reconstruct(decoder, r.activation.float()))
            record["reconstruction"] = f"{stem}.sent.jpg"
        write_json(out / f"{stem}.json", record)
        if "label" in answer:
            tqdm.write(f"{r.name}: {answer['label']}")
            return
        n = int((r.boxes[:, 4] >= args.min_score).sum())
        tqdm.write(f"{r.name}: {n} face{'' if n == 1 else 's'} (score >= {args.min_score})")

    with client:
        results = client.run_many(args.images, on_result=on_result, keep=True)
    bar.close()
    failed = [r for r in results if not r.ok]
    if failed:
        down = [r.name for r in failed if r.unavailable]
        print(
            f"{len(results) - len(failed)} of {len(results)} images processed; not processed: "
            f"{', '.join(r.name for r in failed)}",
            file=sys.stderr,
        )
        if down:
            print(
                f"the server was unreachable for {len(down)} image(s); rerun them when it is back: "
                f"{rerun_command(args, down)}",
                file=sys.stderr,
            )
        return 1
    return 0


def rerun_command(args: argparse.Namespace, images: list[str]) -> str:
    """``veil infer`` on ``images`` with every other option exactly as given, shell-quoted.

    Built from the parser's own option list, so no option (``--noisy``, ``--alpha``, ``--noise``,
    ``--fp16``, ``--weights``, …) can be left out: a rerun must never send clean activations
    where the first run sent obfuscated ones. Images come after ``--``, so names starting with
    ``-`` stay images.
    """
    assert _INFER_PARSER is not None, "register() builds the parser first"
    argv = ["veil", "infer"]
    for action in _INFER_PARSER._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        flag = max((o for o in action.option_strings if not o.startswith("--no-")), key=len)

        def text(v):
            return repr(v) if isinstance(v, float) else str(v)

        if isinstance(action, argparse.BooleanOptionalAction):
            if value is not None:
                argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(action, argparse._StoreConstAction):  # store_true, store_false, store_const
            if value == action.const and value != action.default:
                argv.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for v in value or []:
                argv += [flag, text(v)]
        elif isinstance(action, argparse._StoreAction):
            if isinstance(value, (list, tuple)):
                argv += [flag, *map(text, value)]
            elif value is not None:
                argv += [flag, text(value)]
        else:  # a kind of option this function does not know: refuse rather than drop it
            raise TypeError(f"rerun_command cannot repeat {flag} ({type(action).__name__})")
    return shlex.join(argv + ["--", *images])


def _decoder(path: str | None, model=None):
    """The decoder for reconstructions of ``model``'s activation, or None when none is available (the picture
    is optional)."""
    try:
        from veil.privacy.decoders import load_decoder
    except ImportError:
        if path:
            raise CLIError("--decoder given, but veil.privacy.decoders is not available in this installation") from None
        return None
    return load_decoder(path, model)  # one made for another model or split: refused if named, else none
