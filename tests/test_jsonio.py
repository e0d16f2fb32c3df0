"""Results on disk: standard JSON, atomic replacement, one writer per path."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import threading

import numpy as np
import pytest

from veil.jsonio import ResultBusyError, WriteLock, dumps, write_json


def test_json_is_standard_even_with_nan_and_infinity(tmp_path):
    obj = {"nsr_db": float("inf"), "mAP": float("nan"), "x": np.float32(1.5), "a": np.array([1.0, -np.inf])}
    text = dumps(obj)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"nsr_db": None, "mAP": None, "x": 1.5, "a": [1.0, None]}
    path = write_json(tmp_path / "r.json", obj)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))


def test_concurrent_writers_and_readers_never_see_a_partial_file(tmp_path):
    """Two writers rewrite a large file while a reader reads it: every read parses."""
    path = tmp_path / "out.json"
    write_json(path, {"w": -1})
    big = list(range(50_000))
    stop = threading.Event()
    bad: list[str] = []

    def writer(w):
        for i in range(10):
            write_json(path, {"w": w, "i": i, "rows": big})

    def reader():
        while not stop.is_set():
            try:
                json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                bad.append(str(exc))

    r = threading.Thread(target=reader)
    r.start()
    ws = [threading.Thread(target=writer, args=(w,)) for w in (1, 2)]
    for t in ws:
        t.start()
    for t in ws:
        t.join()
    stop.set()
    r.join()
    assert not bad, bad[:3]
    assert json.loads(path.read_text())["i"] == 9
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"], "no temporary file is left behind"


def _hold(path, ready, release):
    with WriteLock(path):
        ready.set()
        release.wait(30)


def test_a_second_writer_of_the_same_path_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    path = tmp_path / "r.json"
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(path, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(ResultBusyError, match=rf"another run \(pid {holder.pid}\) is writing"):
            WriteLock(path).acquire()
        with WriteLock(tmp_path / "other.json"):  # another path is free
            pass
    finally:
        holder.kill()  # killed, not released: the kernel drops its flock
        holder.join()
    with WriteLock(path):
        pass
    assert not list(tmp_path.glob(".*.lock")), "the lock file goes with its release"


def test_write_lock_refusal_from_another_interpreter(tmp_path):
    path = tmp_path / "r.json"
    code = (
        "import sys; from veil.jsonio import WriteLock, ResultBusyError\n"
        "try:\n    WriteLock(sys.argv[1]).acquire()\nexcept ResultBusyError as e:\n    print(e); sys.exit(3)\n"
    )
    with WriteLock(path):
        r = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60, check=False
        )
    assert r.returncode == 3 and "is writing" in r.stdout
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0


def test_every_json_file_veil_writes_goes_through_jsonio():
    """Issue 11 §2: no JSON file is written by a plain json.dump/json.dumps (which can emit NaN/Infinity)."""
    import re
    from pathlib import Path

    import veil

    src = Path(veil.__file__).parent
    plain = re.compile(r"json\.dump\(|write_text\(\s*json\.dumps|print\(\s*json\.dumps")
    offenders = [
        f"{p.relative_to(src)}:{i}"
        for p in sorted(src.rglob("*.py"))
        if p.name != "jsonio.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if plain.search(line)
    ]
    assert offenders == []
