"""Models from other packages: an installed distribution's ``veil.models`` entry point registers a model
that the registry, ``veil models`` and ``--model`` then know, without editing veil; a broken one warns."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from veil.models import plugins, registry

PLUGIN = textwrap.dedent(
    """
    import torch
    from torch import nn

    from veil.models import InputSpec, ModelConfig, SplitNetwork, SplitSpec, WeightsSpec, register_model

    @register_model(
        ModelConfig(
            name="plugin-net",
            task="classification",
            splits=(SplitSpec("conv", 4, 2, "after its only conv"),),
            weights=WeightsSpec(filename="plugin.pth", sha256="0" * 64, license="test"),
            input=InputSpec(size=(8, 8), channels=1),
            outputs=("logits",),
        )
    )
    def plugin_net(split):
        head = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU())
        tail = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        return SplitNetwork(nn.Sequential(head, tail), head, tail)
    """
)


def _install(root, dist: str, entry: str) -> None:
    """A minimal installed distribution on ``root`` (what pip leaves behind): METADATA and entry points."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[veil.models]\n{entry}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A private site directory on sys.path, with the registry and the plugin bookkeeping restored after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(plugins, "_loaded", set())
    yield tmp_path
    for mod in ("veil_plugin_ok", "veil_plugin_broken"):
        sys.modules.pop(mod, None)


def test_an_installed_package_registers_its_model(site, capsys):
    (site / "veil_plugin_ok.py").write_text(PLUGIN)
    _install(site, "veil_plugin_ok", "plugin-net = veil_plugin_ok")
    assert "plugin-net" in registry.list_models()
    model = registry.build("plugin-net")
    assert model.split_point == "plugin-net.conv" and model.channels == 4

    from veil.cli.main import main

    assert main(["models", "--json"]) == 0
    listed = {m["name"] for m in json.loads(capsys.readouterr().out)}
    assert {"faceboxes", "digits", "plugin-net"} <= listed


def test_a_broken_plugin_warns_and_leaves_the_rest(site):
    (site / "veil_plugin_broken.py").write_text("raise ImportError('needs a package that is missing')\n")
    _install(site, "veil_plugin_broken", "broken = veil_plugin_broken")
    with pytest.warns(UserWarning, match="broken.*needs a package that is missing"):
        names = registry.list_models()
    assert {"faceboxes", "digits"} <= set(names)
    with pytest.raises(registry.UnknownModelError, match="known models"):
        registry.get_config("broken")
