"""One settings object: veil.settings is the only reader of the VEIL_* variables, reads exactly the
documented ones, and each one reaches its field."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from veil import settings as settings_module
from veil.settings import VARIABLES, settings

SRC = Path(settings_module.__file__).parent
ROOT = SRC.parents[1]
# An environment read: os.environ["X"], os.environ.get("X"), os.getenv("X"), or a name handed to a
# reader of settings.py (_path("X")).
READ = re.compile(r"""(?:environ(?:\.get)?\s*[\[(]|getenv\s*\(|_path\s*\()\s*["'](VEIL_\w+)["']""")


def _reads(path: Path) -> set[str]:
    return set(READ.findall(path.read_text()))


def test_only_settings_reads_veil_variables():
    readers = {str(p.relative_to(SRC)): _reads(p) for p in SRC.rglob("*.py") if p != Path(settings_module.__file__)}
    assert not {k: v for k, v in readers.items() if v}, "read VEIL_* through veil.settings.settings()"


def test_settings_reads_exactly_the_documented_variables():
    read = _reads(Path(settings_module.__file__))
    assert read == set(VARIABLES), read ^ set(VARIABLES)
    docs = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    assert [v for v in VARIABLES if v not in docs] == []  # each one is explained to users somewhere


@pytest.mark.parametrize(
    "name, field, value, expected",
    [
        ("VEIL_CACHE_DIR", "cache_dir", "~/c", Path("~/c").expanduser()),
        ("VEIL_WEIGHTS", "weights", "/w/F.pth", Path("/w/F.pth")),
        ("VEIL_DATASET", "dataset", "/d/fddb", Path("/d/fddb")),
        ("VEIL_FIT_IMAGES", "fit_images", f"/a{os.pathsep}~/b{os.pathsep}", (Path("/a"), Path("~/b").expanduser())),
        ("VEIL_NOISE_DIR", "noise_dir", " /n ", Path("/n")),
        ("VEIL_NOISE_KEY_FILE", "noise_key_file", "/k", Path("/k")),
        ("VEIL_NOISE_SHA256", "noise_sha256", " ABC ", "abc"),
        ("VEIL_DECODER", "decoder", "/dec.safetensors", Path("/dec.safetensors")),
        ("VEIL_TRITON_URL", "triton_url", " 127.0.0.1:8001 ", "127.0.0.1:8001"),
    ],
)
def test_each_variable_reaches_its_field_and_is_read_fresh(monkeypatch, name, field, value, expected):
    assert name in VARIABLES
    monkeypatch.delenv(name, raising=False)
    unset = getattr(settings(), field)
    monkeypatch.setenv(name, value)
    assert getattr(settings(), field) == expected != unset
    monkeypatch.setenv(name, "")  # empty is unset
    assert getattr(settings(), field) == unset
