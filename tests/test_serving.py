"""Serving the tail on a real Triton server (the one bundled with nvidia-pytriton), started here.

One `veil serve` process (the CLI, as users run it) serves the module; its clean stop on
Ctrl-C is the last test. The restart test runs its own small server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from veil.export import check_onnx, reference_outputs
from veil.preprocess import load_image
from veil.serving.client import InferenceError, ServerUnavailableError, TritonDetector
from veil.serving.repository import ALL_MODELS, BASE_MODEL, NOISY_MODEL, model_name, write_repository
from veil.serving.server import TritonServer, free_port, free_ports, unsupported_reason

pytestmark = pytest.mark.timeout(300)
SERVED = [BASE_MODEL, NOISY_MODEL, model_name(False, fp16=True)]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        out += [int(x) for x in task.read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[1].split()[0] == "Z")


@pytest.fixture(scope="module")
def small(detector):
    """The same detector at scale 1 (not the FDDB ×3): equality holds at any size, and CI is 2 cores."""
    from veil.detector import Detector

    return Detector(detector.model, detector.weights_sha256, scale=1.0)


def _fitted_noise(weights_sha256: str):
    """The noise fitted for ALPHA 0.8 that ships with veil (a real fit for the reference weights), fresh
    noise on every call: what a user's noisy client runs, not an untrained stand-in."""
    from veil import assets
    from veil.obfuscate import load_obfuscator, noise_path

    noise = noise_path(0.8, assets.NOISE_DIR)
    return load_obfuscator(0.8, noise=noise, weights_sha256=weights_sha256, split_point="faceboxes.rdcl")[0]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, detector) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    write_repository(detector.model, out, detector.weights_sha256, formats=("python", "onnx"))
    return out


@pytest.fixture(scope="module")
def serve(repo, weights_path):
    """`veil serve` in a subprocess on free loopback ports; stopped (SIGINT) by the last test or here."""
    why = unsupported_reason()
    if why:
        pytest.skip(f"the bundled tritonserver cannot run here: {why}")
    ports = free_ports(3)  # together: one at a time could return the same port twice
    key_file = repo.parent / "admin.key"
    cmd = [
        sys.executable,
        "-m",
        "veil",
        "serve",
        "--model-repository",
        str(repo),
        "--http-port",
        str(ports[0]),
        "--grpc-port",
        str(ports[1]),
        "--metrics-port",
        str(ports[2]),
        "--admin-key-file",
        str(key_file),
    ]
    for m in SERVED:
        cmd += ["--model", m]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "ready: HTTP ..." once every model is loaded
    if not line.startswith("ready"):
        proc.kill()
        pytest.fail(f"veil serve did not become ready: {line}{proc.stderr.read()}")
    info = {
        "proc": proc,
        "http": f"127.0.0.1:{ports[0]}",
        "grpc": f"127.0.0.1:{ports[1]}",
        "metrics_port": ports[2],
        "tritonserver": _children(proc.pid),
        "key_file": key_file,
        "ready": line,
    }
    yield info
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    for pid in info["tritonserver"]:
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def images(fddb_image_paths) -> list[np.ndarray]:
    return [load_image(p) for p in fddb_image_paths[:3]]


def test_repository_layout_and_onnx_matches_in_process(repo, detector, images):
    manifest = json.loads((repo / "veil-export.json").read_text())
    assert manifest["weights_sha256"] == detector.weights_sha256
    assert all(v <= 1e-4 for v in manifest["max_abs_error_vs_in_process"].values())
    for form, weights_file in (("python", "model.py"), ("python", "model.onnx"), ("onnx", "model.onnx")):
        for name in (BASE_MODEL, NOISY_MODEL, model_name(False, True), model_name(True, True)):
            cfg = (repo / form / name / "config.pbtxt").read_text()
            assert f'name: "{name}"' in cfg and "dynamic_batching" in cfg and "max_batch_size: 8" in cfg
            assert 'name: "INPUT_0"' in cfg and "dims: [ 128, -1, -1 ]" in cfg
            assert ("TYPE_FP16" in cfg) == name.endswith("_fp16")
            assert 'name: "OUTPUT_0"' in cfg and 'name: "OUTPUT_1"' in cfg
            assert (repo / form / name / "1" / weights_file).is_file()
    # Same tail weights under both names.
    assert (repo / "onnx" / BASE_MODEL / "1" / "model.onnx").read_bytes() == (
        repo / "onnx" / NOISY_MODEL / "1" / "model.onnx"
    ).read_bytes()
    # The ONNX model on a real image's activation, in onnxruntime, equals the in-process tail.
    import onnxruntime as ort

    sess = ort.InferenceSession(
        str(repo / "onnx" / BASE_MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    a, _ = detector.client_side(images[0])
    with torch.inference_mode():
        loc, conf = detector.tail(a)
    got = sess.run(["OUTPUT_0", "OUTPUT_1"], {"INPUT_0": a.numpy()})
    assert np.abs(got[0] - loc.numpy()).max() <= 1e-4 and np.abs(got[1] - conf.numpy()).max() <= 1e-4
    assert check_onnx(detector.model, repo / "onnx" / model_name(False, True) / "1" / "model.onnx", fp16=True) <= 1e-4


def test_export_triton_cli_writes_a_checked_torchscript_repository(tmp_path, weights_path, detector, images):
    """`veil export-triton --format torchscript`: the pytorch-backend form, which no server here can load,
    so its files are checked directly: config parsed back, model.pt equal to the in-process tail."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    out = tmp_path / "repo"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "veil",
            "export-triton",
            "--out",
            str(out),
            "--format",
            "torchscript",
            "--max-batch-size",
            "2",
            "--weights",
            str(weights_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert f"veil serve --model-repository {out}" in r.stdout
    manifest = json.loads((out / "veil-export.json").read_text())
    assert manifest["forms"] == {"torchscript": "torchscript"} and set(manifest["models"]) == set(ALL_MODELS)
    assert set(manifest["max_abs_error_vs_in_process"]) == {"torchscript-fp32", "torchscript-fp16"}
    assert manifest["weights_sha256"] == detector.weights_sha256
    assert not (out / "python").exists() and not (out / "onnx").exists()
    a, _ = detector.client_side(images[0])
    ref_loc, ref_conf = reference_outputs(detector.model, a)
    for name in ALL_MODELS:
        cfg = text_format.Parse(
            (out / "torchscript" / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        assert cfg.name == name and cfg.backend == "pytorch" and cfg.max_batch_size == 2
        fp16 = name.endswith("_fp16")
        assert cfg.input[0].data_type == (model_config_pb2.TYPE_FP16 if fp16 else model_config_pb2.TYPE_FP32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what the pytorch backend loads
            ts = torch.jit.load(str(out / "torchscript" / name / "1" / "model.pt"))
        with torch.inference_mode():
            loc, conf = ts(a.half() if fp16 else a)
        tol = 2e-2 if fp16 else 1e-4  # FP16 rounds the activation before the FP32 tail
        assert loc.dtype == torch.float32 and np.abs(loc.numpy() - ref_loc).max() <= tol
        assert np.abs(conf.numpy() - ref_conf).max() <= tol
    # Both names hold the same weights.
    assert (out / "torchscript" / BASE_MODEL / "1" / "model.pt").read_bytes() == (
        out / "torchscript" / NOISY_MODEL / "1" / "model.pt"
    ).read_bytes()


def test_server_reports_the_configuration_written(serve, repo):
    """What tritonserver parsed from each config.pbtxt is the configuration veil built as data."""
    import tritonclient.http as httpclient
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    from veil.serving.repository import model_config

    client = httpclient.InferenceServerClient(serve["http"])
    try:
        for name in SERVED:
            want = model_config(name, "python", name.endswith("_fp16"))
            got = json_format.ParseDict(
                client.get_model_config(name), model_config_pb2.ModelConfig(), ignore_unknown_fields=True
            )
            assert got.name == name and got.backend == "python" and got.max_batch_size == want["max_batch_size"]
            for field in ("input", "output"):
                assert [
                    (t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in getattr(got, field)
                ] == [(t["name"], t["data_type"], t["dims"]) for t in want[field]]
            assert {k: v.string_value for k, v in got.parameters.items()} == {
                e["key"]: e["value"]["string_value"] for e in want["parameters"]
            }
            assert got.dynamic_batching.max_queue_delay_microseconds == 2000
            assert [(model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind), g.count) for g in got.instance_group] == [
                ("KIND_CPU", 1)
            ]
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_python_backend_through_server_equals_in_process(serve, small, images, protocol):
    client = TritonDetector(small, serve[protocol], protocol)
    for image in images[:2]:
        a, prep = small.client_side(image)
        loc, conf = client.infer_activation(a)
        ref_loc, ref_conf = reference_outputs(small.model, a)
        assert loc.shape == ref_loc.shape and np.abs(loc - ref_loc).max() <= 1e-4
        assert np.abs(conf - ref_conf).max() <= 1e-4
        boxes = small.boxes_from_outputs(torch.from_numpy(loc), torch.from_numpy(conf), prep)
        ref = small.boxes_from_activation(a, prep)
        assert boxes.shape == ref.shape and len(ref) > 0
        np.testing.assert_allclose(boxes[:, :4], ref[:, :4], atol=1e-3)  # pixels
        assert np.abs(boxes[:, 4] - ref[:, 4]).max() <= 1e-4
    # The whole path (detect) and a batch of two activations of the same size.
    boxes = client.detect(images[0])
    ref = small.detect(images[0])
    assert boxes.shape == ref.shape and np.abs(boxes[:, 4] - ref[:, 4]).max() <= 1e-4
    a = torch.cat([small.client_side(images[2])[0]] * 2)
    loc, _ = client.infer_activation(a)
    assert loc.shape[0] == 2 and np.abs(loc - reference_outputs(small.model, a)[0]).max() <= 1e-4


def test_noisy_and_fp16_through_server_equal_in_process_for_the_same_sample(serve, small, images):
    from veil.detector import Detector

    obf = _fitted_noise(small.weights_sha256)  # fresh OS-seeded noise on every call
    noisy = Detector(small.model, small.weights_sha256, scale=small.scale, obfuscator=obf)
    client = TritonDetector(noisy, serve["http"], "http")
    assert client.model == NOISY_MODEL
    image = images[1]
    boxes, sent = client.detect_with_activation(image)
    prep = small.client_side(image)[1]
    ref = small.boxes_from_activation(sent, prep)  # the same noise sample, tail in-process
    assert boxes.shape == ref.shape
    assert np.abs(boxes[:, 4] - ref[:, 4]).max() <= 1e-4
    np.testing.assert_allclose(boxes[:, :4], ref[:, :4], atol=1e-3)
    fp16 = TritonDetector(small, serve["grpc"], "grpc", fp16=True)
    assert fp16.model == model_name(False, True)
    boxes, sent = fp16.detect_with_activation(image)
    assert sent.dtype == torch.float16
    ref = small.boxes_from_activation(sent.float(), prep)
    assert boxes.shape == ref.shape and np.abs(boxes[:, 4] - ref[:, 4]).max() <= 1e-4


def test_fddb_evaluation_through_the_server_equals_in_process(serve, small, fddb_dir):
    """veil.evaluation with the trust-zone client as detector: same AP as in-process, clean and seeded-noisy."""
    from veil.detector import Detector
    from veil.evaluation import evaluate_fddb
    from veil.evaluation.runner import Shard

    shard = Shard(0, 75)  # 3 of the FDDB images here
    noisy = Detector(
        small.model, small.weights_sha256, scale=small.scale, obfuscator=_fitted_noise(small.weights_sha256)
    )
    for local, seed in ((small, None), (noisy, 0)):
        ref = evaluate_fddb(local, fddb_dir, shard=shard, seed=seed, progress=False)
        got = evaluate_fddb(
            TritonDetector(local, serve["grpc"], "grpc"), fddb_dir, shard=shard, seed=seed, progress=False
        )
        assert got.images == ref.images == 3 and got.faces == ref.faces
        assert abs(got.mAP - ref.mAP) <= 1e-3


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(serve, small, images):
    a = small.client_side(images[0])[0]
    with pytest.raises(InferenceError, match=r"face_detection_nope.*serve.*face_detection_base"):
        TritonDetector(small, serve["http"], "http", model="face_detection_nope").infer_activation(a)
    for protocol in ("http", "grpc"):
        client = TritonDetector(small, serve[protocol], protocol)
        with pytest.raises(InferenceError, match="unexpected shape"):
            client.infer_activation(a[:, :64])
        wrong_dtype = TritonDetector(small, serve[protocol], protocol, model=BASE_MODEL, fp16=True)
        with pytest.raises(InferenceError, match=r"(?i)data-?type"):
            wrong_dtype.infer_activation(a)
        with pytest.raises(InferenceError, match="NaN"):
            client.infer_activation(torch.full_like(a, float("nan")))
        loc, _ = client.infer_activation(a)  # still serving
        assert np.abs(loc - reference_outputs(small.model, a)[0]).max() <= 1e-4


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_no_server_gives_a_clear_error_after_bounded_retries(detector, protocol):
    url = f"127.0.0.1:{free_port()}"
    client = TritonDetector(detector, url, protocol, retries=2, retry_delay=0.05, timeout=5)
    with pytest.raises(ServerUnavailableError) as err:
        client.infer_activation(torch.zeros(1, 128, 4, 4))
    msg = str(err.value)
    assert url in msg and "3 tries" in msg and "veil serve --model-repository" in msg


def test_cli_infer_writes_results_and_reports_failures(serve, repo, weights_path, fddb_image_paths, tmp_path, detector):
    import shutil

    from veil import assets
    from veil.obfuscate import noise_path

    noise_dir = tmp_path / "noise"  # found there by --noise-dir: a real fit (the one veil ships for ALPHA 0.8)
    noise_dir.mkdir()
    shutil.copyfile(noise_path(0.8, assets.NOISE_DIR), noise_path(0.8, noise_dir))
    img = str(fddb_image_paths[0])
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "veil",
        "infer",
        img,
        str(tmp_path / "missing.jpg"),
        "--url",
        serve["grpc"],
        "--protocol",
        "grpc",
        "--noisy",
        "--alpha",
        "0.8",
        "--noise-dir",
        str(noise_dir),
        "--out",
        str(out),
        "--weights",
        str(weights_path),
        "--scale",
        "1",
    ]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr  # one image missing
    assert (out / f"{Path(img).stem}.json").is_file(), r.stderr
    assert "not processed" in r.stderr and "missing.jpg" in r.stderr
    rec = json.loads((out / f"{Path(img).stem}.json").read_text())
    assert rec["model"] == NOISY_MODEL and rec["sent"]["dtype"] == "float32", r.stderr
    assert rec["noise"]["alpha"] == 0.8 and (out / f"{Path(img).stem}.jpg").is_file()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "veil",
            "infer",
            img,
            "--url",
            f"127.0.0.1:{free_port()}",
            "--retries",
            "1",
            "--out",
            str(out),
            "--weights",
            str(weights_path),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "no Triton server answered" in r.stderr and "veil serve" in r.stderr


def test_server_stopped_mid_batch_then_back(repo, small, fddb_image_paths):
    """Images sent while the server is down are reported; the rest are processed once it is back."""
    if unsupported_reason():
        pytest.skip(unsupported_reason())
    server = TritonServer(repo / "python", models=[BASE_MODEL])
    paths = [str(p) for p in fddb_image_paths[:5]]
    try:
        server.start()
        client = TritonDetector(small, server.http_url, "http", retries=1, retry_delay=0.1, timeout=10)

        def chaos(i, result):
            if i == 0:
                server.stop()  # server goes away after the first image
            elif i == 2:
                server.start()  # and comes back (same ports) after the third

        results = client.run_many(paths, on_result=chaos)
    finally:
        server.stop()
    assert [r.ok for r in results] == [True, False, False, True, True]
    assert all(r.unavailable and server.http_url in r.error for r in results[1:3])
    for r, p in zip(results[3:], paths[3:]):
        ref = small.detect(load_image(p))
        assert r.boxes.shape == ref.shape and np.abs(r.boxes[:, 4] - ref[:, 4]).max() <= 1e-4


# -- proof that raw pixels never leave the trust zone ---------------------------------------------


def _forbidden_chunks(path: Path, image: np.ndarray, prep_tensor: torch.Tensor, clean: torch.Tensor) -> dict:
    """Byte strings that must not appear in the traffic: the file, pixel rows, the network input."""
    jpeg = path.read_bytes()
    chunks = {f"jpeg@{i}": jpeg[i : i + 32] for i in range(0, len(jpeg) - 32, 256)}
    h = image.shape[0]
    for r in range(0, h, max(1, h // 16)):
        chunks[f"pixel row {r}"] = image[r].tobytes()
        chunks[f"pixel row {r} (RGB)"] = image[r, :, ::-1].copy().tobytes()
    x = prep_tensor[0].numpy()
    for c in range(3):
        for r in range(0, x.shape[1], max(1, x.shape[1] // 8)):
            chunks[f"input c{c} row {r} fp32"] = x[c, r, :64].tobytes()
            chunks[f"input c{c} row {r} fp16"] = x[c, r, :64].astype(np.float16).tobytes()
    cl = clean[0].numpy()
    for c in range(0, 128, 16):  # the clean activation must not leave either: only the noisy one does
        chunks[f"clean activation c{c}"] = cl[c].tobytes()[:256]
    return chunks


def _assert_absent(traffic: bytes, chunks: dict) -> None:
    found = [k for k, v in chunks.items() if v and v in traffic]
    assert not found, f"trust-zone data found in the traffic: {found[:5]}"


def _noisy_client(small, url, protocol):
    from veil.detector import Detector

    obf = _fitted_noise(small.weights_sha256)
    return TritonDetector(Detector(small.model, small.weights_sha256, scale=small.scale, obfuscator=obf), url, protocol)


def test_trust_zone_http_only_the_obfuscated_activation_leaves(serve, small, fddb_image_paths):
    from veil.serving.wire import RecordingProxy, http_requests

    path = fddb_image_paths[0]
    image = load_image(path)
    clean, prep = small.client_side(image)
    host, port = serve["http"].split(":")
    payloads = []
    with RecordingProxy(host, int(port)) as proxy:
        client = _noisy_client(small, proxy.url, "http")
        for _ in range(2):
            proxy.clear()
            boxes, sent = client.detect_with_activation(image)
            traffic = proxy.sent
            reqs = http_requests(traffic)
            assert [r[0].split()[:2] for r in reqs] == [[b"POST", f"/v2/models/{NOISY_MODEL}/infer".encode()]]
            _, headers, body = reqs[0]
            json_len = int(headers["inference-header-content-length"])
            header = json.loads(body[:json_len])
            assert [i["name"] for i in header["inputs"]] == ["INPUT_0"]  # one tensor, nothing else
            inp = header["inputs"][0]
            assert inp["shape"] == list(sent.shape) and inp["datatype"] == "FP32" and "data" not in inp
            payload = body[json_len:]
            assert inp["parameters"]["binary_data_size"] == len(payload) == sent.numel() * 4
            np.testing.assert_array_equal(np.frombuffer(payload, np.float32).reshape(sent.shape), sent.numpy())
            _assert_absent(traffic, _forbidden_chunks(path, image, prep.tensor, clean))
            payloads.append(payload)
            assert len(boxes) > 0
    assert payloads[0] != payloads[1]  # fresh noise on every call, for the same image


def test_trust_zone_grpc_only_the_obfuscated_activation_leaves(serve, small, fddb_image_paths):
    from tritonclient.grpc import service_pb2

    from veil.serving.wire import RecordingProxy, http2_messages

    path = fddb_image_paths[1]
    image = load_image(path)
    clean, prep = small.client_side(image)
    host, port = serve["grpc"].split(":")
    sent_payloads = []
    with RecordingProxy(host, int(port)) as proxy:
        client = _noisy_client(small, proxy.url, "grpc")
        for _ in range(2):
            _, sent = client.detect_with_activation(image)
            sent_payloads.append(sent.numpy().tobytes())
        traffic = proxy.sent
    requests = [service_pb2.ModelInferRequest.FromString(m) for m in http2_messages(traffic)]
    assert len(requests) == 2
    for req, expected in zip(requests, sent_payloads):
        assert req.model_name == NOISY_MODEL
        assert [i.name for i in req.inputs] == ["INPUT_0"] and len(req.raw_input_contents) == 1
        assert req.raw_input_contents[0] == expected  # the activation, byte for byte, and nothing else
        assert list(req.inputs[0].shape) == list(clean.shape) and req.inputs[0].datatype == "FP32"
    assert requests[0].raw_input_contents[0] != requests[1].raw_input_contents[0]
    _assert_absent(traffic, _forbidden_chunks(path, image, prep.tensor, clean))
    # Everything the client sent is accounted for: the activations plus a few KiB of framing.
    assert len(traffic) - sum(map(len, sent_payloads)) < 8192


def test_json_wire_path_sends_the_activation_as_text_and_gets_the_same_outputs(serve, small, images):
    """binary=False (the reference design's FP32-as-JSON request): the activation travels as JSON numbers,
    the outputs come back as JSON too, and equal the binary path's and the in-process tail's."""
    from veil.serving.wire import RecordingProxy, http_requests

    a, _ = small.client_side(images[0])
    host, port = serve["http"].split(":")
    with RecordingProxy(host, int(port)) as proxy:
        loc, conf = TritonDetector(small, proxy.url, "http", binary=False).infer_activation(a)
        reqs = http_requests(proxy.sent)
    assert len(reqs) == 1
    _, headers, body = reqs[0]
    assert "inference-header-content-length" not in headers  # no binary section: the body is JSON only
    request = json.loads(body)
    inp = request["inputs"][0]
    assert inp["name"] == "INPUT_0" and inp["datatype"] == "FP32" and inp["shape"] == list(a.shape)
    np.testing.assert_array_equal(np.asarray(inp["data"], np.float32).reshape(a.shape), a.numpy())
    assert all(not o.get("parameters", {}).get("binary_data", False) for o in request["outputs"])
    ref_loc, ref_conf = reference_outputs(small.model, a)
    assert np.abs(loc - ref_loc).max() <= 1e-4 and np.abs(conf - ref_conf).max() <= 1e-4
    bin_loc, _ = TritonDetector(small, serve["http"], "http").infer_activation(a)
    np.testing.assert_array_equal(loc, bin_loc)  # text and binary carry the same FP32 values
    for protocol, fp16 in (("grpc", False), ("http", True)):
        with pytest.raises(ValueError, match="only over HTTP with FP32"):
            TritonDetector(small, serve[protocol], protocol, fp16=fp16, binary=False)


# -- hardening (issue 11): bounds, locked-down APIs, deadlines, honest readiness ---------------------


def _http(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://{url}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_activation_size_is_bounded_in_config_and_model(serve, repo, small):
    from veil.serving.repository import MAX_ACTIVATION_AREA, MAX_ACTIVATION_SIDE

    cfg = (repo / "python" / BASE_MODEL / "config.pbtxt").read_text()
    assert f'key: "max_height" value {{ string_value: "{MAX_ACTIVATION_SIDE}" }}' in cfg
    assert f'key: "max_area" value {{ string_value: "{MAX_ACTIVATION_AREA}" }}' in cfg
    for protocol in ("http", "grpc"):
        client = TritonDetector(small, serve[protocol], protocol, retries=0)
        for shape in (
            (1, 128, MAX_ACTIVATION_SIDE + 1, 4),
            (1, 128, 4, MAX_ACTIVATION_SIDE + 1),
            (1, 128, 200, 200),
        ):  # 200×200 is under the side bound, over the area bound
            with pytest.raises(InferenceError, match="over this server's bound"):
                client.infer_activation(torch.zeros(shape))
        loc, _ = client.infer_activation(torch.zeros(1, 128, 128, 128))  # the largest accepted
        assert loc.shape[0] == 1


def test_operator_apis_are_restricted_and_metrics_off(serve):
    import socket

    import tritonclient.grpc as grpcclient

    http = serve["http"]
    key = serve["key_file"].read_text().strip()
    assert oct(serve["key_file"].stat().st_mode & 0o777) == "0o600"
    assert "metrics off" in serve["ready"]
    open_apis = [("GET", "/v2/health/ready"), ("GET", f"/v2/models/{BASE_MODEL}"), ("GET", "/v2")]
    for method, path in open_apis:
        assert _http(http + path, method) == 200, path
    restricted = [
        ("POST", "/v2/logging", b'{"log_verbose_level": 1}'),
        ("GET", "/v2/logging", None),
        ("POST", "/v2/systemsharedmemory/region/x/register", b'{"key": "/veil-probe", "offset": 0, "byte_size": 64}'),
        ("GET", "/v2/systemsharedmemory/status", None),
        ("GET", "/v2/models/stats", None),
        ("POST", "/v2/repository/index", b"{}"),
        ("POST", f"/v2/repository/models/{BASE_MODEL}/unload", b"{}"),
        ("GET", "/v2/trace/setting", None),
    ]
    for method, path, body in restricted:
        assert _http(http + path, method, body) == 403, path
    assert _http(http + "/v2/logging", "GET", headers={"veil-admin-key": "wrong"}) == 403
    assert _http(http + "/v2/logging", "GET", headers={"veil-admin-key": key}) == 200
    g = grpcclient.InferenceServerClient(serve["grpc"])
    try:
        assert g.is_server_ready()
        for call in (
            g.get_log_settings,
            g.get_inference_statistics,
            g.get_model_repository_index,
            g.get_system_shared_memory_status,
        ):
            with pytest.raises(Exception, match=r"(?i)restricted|permission|unauth|denied"):
                call()
        assert g.get_log_settings(headers={"triton-grpc-protocol-veil-admin-key": key})  # gRPC prefixes the name
    finally:
        g.close()
    with socket.socket() as sock:  # metrics are off: nothing listens on the metrics port
        assert sock.connect_ex(("127.0.0.1", serve["metrics_port"])) != 0
    # The server's own shared-memory regions are private to its user.
    regions = list(Path("/dev/shm").glob(f"veil{serve['proc'].pid}-*"))
    assert regions and all(r.stat().st_mode & 0o077 == 0 for r in regions), [oct(r.stat().st_mode) for r in regions]


def test_serve_refuses_a_port_in_use_instead_of_claiming_ready(serve, repo):
    from veil.serving.server import ServerError

    port = serve["http"].split(":")[1]
    grpc_port, metrics_port = free_ports(2)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "veil",
            "serve",
            "--model-repository",
            str(repo),
            "--http-port",
            port,
            "--grpc-port",
            str(grpc_port),
            "--metrics-port",
            str(metrics_port),
            "--timeout",
            "30",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "ready" not in r.stdout, r.stdout + r.stderr
    assert f"HTTP port {port} on 127.0.0.1 already in use" in r.stderr
    other = TritonServer(repo / "python", http_port=int(port))
    with pytest.raises(ServerError, match="already in use"):
        other.start()
    # The server answering there is not this one: its id differs.
    assert other.answering_id() not in (None, other.server_id)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.timeout(120)  # a client that ignored its deadline would wait here forever
def test_a_hung_server_hits_the_deadline_and_images_are_reported(serve, small, fddb_image_paths, protocol):
    """SIGSTOP the server: each request ends at its deadline, is retried, then reported; after SIGCONT
    the same client works again. (No timing is asserted: a request that never ended would hang the
    test until its timeout; the number of tries shows each one ended and was retried.)"""
    pid = serve["tritonserver"][0]
    client = TritonDetector(small, serve[protocol], protocol, retries=1, retry_delay=0.1, timeout=1.5)
    paths = [str(p) for p in fddb_image_paths[:2]]
    os.kill(pid, signal.SIGSTOP)
    try:
        results = client.run_many(paths)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert [r.unavailable for r in results] == [True, True], [r.error for r in results]
    assert all("2 tries" in r.error for r in results)
    client.wait_until_ready(30)
    assert client.run_many(paths[:1])[0].ok


def test_serve_stops_cleanly_on_ctrl_c(serve):
    """Last: SIGINT to `veil serve` stops tritonserver and its python-backend stubs; nothing is left."""
    proc, servers = serve["proc"], serve["tritonserver"]
    assert list(Path("/dev/shm").glob(f"veil{proc.pid}-*"))  # the regions the check below looks for
    assert servers and all(_alive(p) for p in servers)
    stubs = [c for p in servers for c in _children(p)]
    assert stubs  # one python backend stub per loaded model
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    time.sleep(0.5)
    assert not [p for p in servers + stubs if _alive(p)]
    # ... nor any of its python-backend shared-memory regions (prefix veil<pid of veil serve>-).
    assert not list(Path("/dev/shm").glob(f"veil{proc.pid}-*"))
