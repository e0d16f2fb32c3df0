"""config.pbtxt from data: what veil writes is what protobuf's own text-format parser reads back.

The reference parser is protobuf's ``text_format`` with Triton's ``ModelConfig`` message (shipped in
tritonclient); that the real tritonserver loads these files and reports the same configuration is
tested in test_serving.py.
"""

from __future__ import annotations

import pytest

from veil.serving.pbtxt import Enum, dumps, map_entries, quote
from veil.serving.repository import ALL_MODELS, FORMATS, config_pbtxt, model_config

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import json_format, text_format  # noqa: E402  (after the skip: tritonclient brings it)


def _parsed(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _expected(config: dict):
    """Protobuf's reading of the same data as JSON (map fields as dicts there)."""
    data = dict(config)
    if "parameters" in data:
        data["parameters"] = {e["key"]: e["value"] for e in data["parameters"]}
    return json_format.ParseDict(data, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fp16", [False, True])
def test_model_config_round_trips_through_protobufs_parser(fmt, fp16):
    name = ALL_MODELS[3 if fp16 else 0]
    config = model_config(name, fmt, fp16, max_batch_size=4, instances=2)
    got = _parsed(config_pbtxt(name, fmt, fp16, max_batch_size=4, instances=2))
    assert got == _expected(config)
    # Spot checks against the message itself, not our data: the fields Triton acts on.
    assert got.name == name and got.max_batch_size == 4 and got.instance_group[0].count == 2
    assert got.backend == {"python": "python", "onnx": "onnxruntime", "torchscript": "pytorch"}[fmt]
    want = model_config_pb2.DataType.TYPE_FP16 if fp16 else model_config_pb2.DataType.TYPE_FP32
    assert got.input[0].data_type == want and list(got.input[0].dims) == [128, -1, -1]
    assert [o.name for o in got.output] == ["OUTPUT_0", "OUTPUT_1"]
    assert got.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.Kind.KIND_CPU
    assert got.dynamic_batching.max_queue_delay_microseconds == 2000
    if fmt == "python":
        assert got.parameters["tail_file"].string_value == "model.onnx"
        assert int(got.parameters["max_area"].string_value) > 0
    else:
        assert not got.parameters


@pytest.mark.parametrize("text", ['say "hi"', "back\\slash", "two\nlines", "tab\tand\rcr", "σ ≤ 0.8 ×3", ""])
def test_strings_are_escaped_so_protobuf_reads_them_back(text):
    assert _parsed(dumps({"name": text})).name == text
    assert quote(text).isascii()


def test_scalars_lists_and_nested_messages():
    text = dumps(
        {
            "max_batch_size": 0,
            "input": [],
            "optimization": {"priority": Enum("PRIORITY_MAX")},
            "dynamic_batching": {"preserve_ordering": True, "preferred_batch_size": [2, 4]},
            "parameters": map_entries({"k": {"string_value": "v"}}),
            "backend": None,
        }
    )
    assert "input" not in text and "backend" not in text  # empty repeated and None fields are left out
    got = _parsed(text)
    assert got.optimization.priority == model_config_pb2.ModelOptimizationPolicy.PRIORITY_MAX
    assert got.dynamic_batching.preserve_ordering is True
    assert list(got.dynamic_batching.preferred_batch_size) == [2, 4]
    assert got.parameters["k"].string_value == "v"
    # A long nested message is written over several lines, and still parses.
    long = dumps({"parameters": map_entries({"p": {"string_value": "x" * 120}})})
    assert long.count("\n") > 3 and _parsed(long).parameters["p"].string_value == "x" * 120


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ({"rate": float("nan")}, ValueError, "rate"),
        ({"rate": float("inf")}, ValueError, "rate"),
        ({"not a name": 1}, ValueError, "not a field name"),
        ({"input": [{"name": "a"}, 3]}, TypeError, "input"),
        ({"dims": [[1, 2]]}, TypeError, "dims"),
        ({"blob": b"bytes"}, TypeError, "bytes"),
        ({"outer": {"inner": {1, 2}}}, TypeError, "outer.inner"),
    ],
)
def test_values_without_a_text_format_are_refused_with_the_field(bad, error, match):
    with pytest.raises(error, match=match):
        dumps(bad)


def test_enum_names_are_checked():
    assert str(Enum("TYPE_FP32")) == "TYPE_FP32"
    with pytest.raises(ValueError, match="enum"):
        Enum('TYPE_FP32" }')
