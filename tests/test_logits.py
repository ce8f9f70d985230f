"""Tests for reading logits out of model outputs."""

from __future__ import annotations

import re
from collections import OrderedDict, namedtuple
from types import SimpleNamespace

import pytest
import torch

from labelkeep_plugins.errors import LogitsError
from labelkeep_plugins.loss.logits import as_logits

LOGITS = torch.randn(4, 3)


def test_tensor_is_taken_as_is():
    assert as_logits(LOGITS) is LOGITS


@pytest.mark.parametrize("mapping", [dict, OrderedDict])
def test_mapping_with_logits_key(mapping):
    output = mapping(loss=torch.tensor(1.0), logits=LOGITS)
    assert as_logits(output) is LOGITS


def test_object_with_logits_attribute():
    assert as_logits(SimpleNamespace(logits=LOGITS, hidden=None)) is LOGITS


def test_tuple_requires_a_selector():
    with pytest.raises(LogitsError, match="logits:") as info:
        as_logits((LOGITS, torch.randn(4, 8)))
    assert "tuple" in str(info.value)


def test_namedtuple_selected_by_field_name_or_index():
    Output = namedtuple("Output", ["features", "logits"])
    output = Output(torch.randn(4, 8), LOGITS)
    assert as_logits(output, "logits") is LOGITS
    assert as_logits(output, 1) is LOGITS


@pytest.mark.parametrize(
    ("output", "selector"),
    [
        ((LOGITS, torch.randn(4, 8)), 0),
        ([torch.randn(4, 8), LOGITS], -1),
        ({"out": LOGITS, "aux": torch.randn(4, 3)}, "out"),
        (SimpleNamespace(scores=LOGITS), "scores"),
    ],
)
def test_selector_int_and_str(output, selector):
    assert as_logits(output, selector) is LOGITS


def test_wrong_key_names_type_and_keys():
    with pytest.raises(LogitsError) as info:
        as_logits({"out": LOGITS, "aux": LOGITS}, "logitz")
    message = str(info.value)
    assert "dict" in message and "'aux'" in message and "'out'" in message
    assert "'logitz'" in message


def test_wrong_index_names_type_and_length():
    with pytest.raises(LogitsError, match=r"tuple.*length 2"):
        as_logits((LOGITS, LOGITS), 5)


def test_wrong_attribute_names_type():
    with pytest.raises(LogitsError, match="SimpleNamespace"):
        as_logits(SimpleNamespace(scores=LOGITS), "logits_")


def test_dict_without_logits_key_lists_keys():
    with pytest.raises(LogitsError, match=r"\['a', 'b'\]") as info:
        as_logits({"a": LOGITS, "b": LOGITS})
    assert "logits:" in str(info.value)


def test_selected_value_must_be_a_tensor():
    with pytest.raises(LogitsError, match="list"):
        as_logits({"logits": [[1.0, 2.0]]})


@pytest.mark.parametrize("shape", [(4,), (2, 4, 3)])
def test_wrong_dimensions_name_the_shape(shape):
    with pytest.raises(LogitsError, match=re.escape(f"shape {shape!r}")):
        as_logits(torch.randn(*shape))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_tensor_is_rejected(dtype):
    with pytest.raises(LogitsError, match="dtype"):
        as_logits(torch.zeros(4, 3, dtype=dtype))


def test_low_precision_logits_are_accepted():
    half = LOGITS.half()
    assert as_logits(half) is half


def test_integer_class_ids_are_named_as_not_logits():
    with pytest.raises(LogitsError, match=r"integer class ids.*not logits"):
        as_logits(torch.tensor([3, 1, 2]))
