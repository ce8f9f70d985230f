"""Tests for labelkeep_plugins.metrics: hand-counted cases, scipy cross-checks, streaming."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import softmax

from labelkeep_plugins.errors import ConfigError, NonFiniteError, ShapeMismatchError
from labelkeep_plugins.metrics import AgreementMeter, AgreementReport, agreement

# A small labelled example, counted by hand:
#   idx        0  1  2  3  4  5
#   reference  0  1  2  2  1  0
#   compressed 0  2  2  1  1  2
#   targets    0  1  1  2  1  2
# mismatches: idx 1, 3, 5                           -> 3 / 6
# reference right: idx 0, 1, 3, 4                   -> 4 / 6
# compressed right: idx 0, 4, 5                     -> 3 / 6, errors of c: idx 1, 2, 3 -> 3
# negative flips (r right, c wrong): idx 1, 3       -> 2, NFI = 2 / 3
# positive flips (r wrong, c right): idx 5          -> 1
# per class by target: 0: {0} 0/1; 1: {1, 2, 4} 1/3 (only idx 1); 2: {3, 5} 2/2
REF = [0, 1, 2, 2, 1, 0]
COMP = [0, 2, 2, 1, 1, 2]
TARGETS = [0, 1, 1, 2, 1, 2]

# Logits, 4 samples x 3 classes:
#   reference argmax: 0, 1, 2, 0 (row 3 ties 2 = 2: argmax takes the first, class 0)
#   compressed argmax: 1, 2, 2, 2  -> mismatches at rows 0, 1, 3 -> 3 / 4
#   reference label in compressed top-2: row 0 {1, 0} yes, row 1 {2, 1} yes, row 2 yes,
#   row 3 {2, 1} no -> top-1 1/4, top-2 3/4, top-3 4/4; k = 5 > C is skipped
REF_LOGITS = [[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0], [2.0, 2.0, 0.0]]
COMP_LOGITS = [[2.0, 3.0, 0.0], [0.0, 1.0, 2.0], [1.0, 0.0, 5.0], [0.0, 1.0, 2.0]]


def _random_data(n: int = 1000, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    reference = torch.randn(n, classes, generator=generator) * 2
    compressed = reference + torch.randn(n, classes, generator=generator)
    targets = torch.randint(0, classes, (n,), generator=generator)
    return reference, compressed, targets


def _assert_reports_close(got: AgreementReport, want: AgreementReport) -> None:
    """Field-by-field comparison: ints exactly, floats to 1e-12, dicts key by key."""
    for field in dataclasses.fields(AgreementReport):
        a, b = getattr(got, field.name), getattr(want, field.name)
        if isinstance(b, dict):
            assert a.keys() == b.keys(), field.name
            for key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), (field.name, key)
        elif isinstance(b, float):
            assert a == pytest.approx(b, rel=1e-12, abs=1e-12), field.name
        else:
            assert a == b, field.name


def test_labels_only_without_targets() -> None:
    report = agreement(REF, COMP)
    assert (report.samples, report.mismatches, report.labelled) == (6, 3, 0)
    assert report.mismatch_rate == pytest.approx(0.5)
    assert report.agreement_rate == pytest.approx(0.5)
    for name in (
        "negative_flips",
        "negative_flip_rate",
        "positive_flips",
        "positive_flip_rate",
        "negative_flip_impact",
        "reference_accuracy",
        "compressed_accuracy",
        "probability_loyalty",
    ):
        assert getattr(report, name) is None, name
    assert report.topk_agreement == {}
    # Without targets a sample's class is the reference's label:
    # class 0: idx 0, 5 -> idx 5 mismatched 1/2; class 1: idx 1, 4 -> 1/2; class 2: idx 2, 3 -> 1/2
    assert report.per_class_mismatch_rate == pytest.approx({0: 0.5, 1: 0.5, 2: 0.5})
    assert report.per_class_mismatch_spread == {"std": 0.0, "range": 0.0}


def test_labels_with_targets_flips_and_impact() -> None:
    report = agreement(REF, COMP, TARGETS)
    assert (report.samples, report.mismatches, report.labelled) == (6, 3, 6)
    assert (report.negative_flips, report.positive_flips) == (2, 1)
    assert report.negative_flip_rate == pytest.approx(2 / 6)
    assert report.positive_flip_rate == pytest.approx(1 / 6)
    assert report.negative_flip_impact == pytest.approx(2 / 3)
    assert report.reference_accuracy == pytest.approx(4 / 6)
    assert report.compressed_accuracy == pytest.approx(3 / 6)


def test_per_class_rates_and_spread_follow_targets() -> None:
    report = agreement(REF, COMP, TARGETS)
    assert report.per_class_mismatch_rate == pytest.approx({0: 0.0, 1: 1 / 3, 2: 1.0})
    # rates 0, 1/3, 1: mean 4/9, deviations -4/9, -1/9, 5/9 -> variance (16 + 1 + 25) / 243
    assert report.per_class_mismatch_spread["std"] == pytest.approx(math.sqrt(14) / 9)
    assert report.per_class_mismatch_spread["range"] == pytest.approx(1.0)


def test_single_class_spread_is_zero_and_no_errors_give_zero_impact() -> None:
    report = agreement([3, 3, 3], [3, 3, 1], [3, 3, 3])
    # c's only error is idx 2, where r was right: NF 1, NFI 1/1
    assert report.per_class_mismatch_rate == pytest.approx({3: 1 / 3})
    assert report.per_class_mismatch_spread == {"std": 0.0, "range": 0.0}
    assert report.negative_flip_impact == pytest.approx(1.0)
    perfect = agreement([0, 1], [0, 1], [0, 1])
    assert perfect.negative_flip_impact == 0.0
    assert (perfect.negative_flips, perfect.positive_flips) == (0, 0)


def test_logits_input_mismatches_and_topk() -> None:
    report = agreement(REF_LOGITS, COMP_LOGITS, topk=(1, 2, 3, 5))
    assert (report.samples, report.mismatches) == (4, 3)
    assert report.topk_agreement == pytest.approx({1: 0.25, 2: 0.75, 3: 1.0})
    assert list(report.topk_agreement) == [1, 2, 3]
    # classes by reference label: 0 -> rows 0, 3 (both mismatched), 1 -> row 1, 2 -> row 2
    assert report.per_class_mismatch_rate == pytest.approx({0: 1.0, 1: 1.0, 2: 0.0})
    assert report.probability_loyalty is not None
    assert 0.0 < report.probability_loyalty < 1.0


def test_top1_breaks_ties_like_argmax() -> None:
    # compressed [1, 1, 0] ties classes 0 and 1; argmax (first maximum) is 0
    tie = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    report = agreement(torch.tensor([0, 1]), tie, topk=(1, 2))
    assert report.mismatches == 1
    assert report.topk_agreement == pytest.approx({1: 0.5, 2: 1.0})
    assert report.topk_agreement[1] == pytest.approx(report.agreement_rate)


def test_mixed_kinds() -> None:
    ref_labels = torch.tensor([0, 1, 2, 0])  # argmax of REF_LOGITS
    from_labels = agreement(ref_labels, COMP_LOGITS, topk=(1, 2))
    assert from_labels.mismatches == 3
    assert from_labels.topk_agreement == pytest.approx({1: 0.25, 2: 0.75})
    assert from_labels.probability_loyalty is None
    comp_labels = np.array([1, 2, 2, 2])  # argmax of COMP_LOGITS, as numpy
    from_logits = agreement(np.array(REF_LOGITS, dtype=np.float32), comp_labels)
    assert from_logits.mismatches == 3
    assert from_logits.topk_agreement == {}
    assert from_logits.probability_loyalty is None


def test_reference_label_outside_compressed_classes_is_in_no_topk() -> None:
    report = agreement([7, 0], [[0.0, 1.0], [2.0, 1.0]], topk=(1, 2))
    assert report.mismatches == 1
    assert report.topk_agreement == pytest.approx({1: 0.5, 2: 0.5})


def test_probability_loyalty_matches_scipy() -> None:
    reference, compressed, _ = _random_data(n=64, classes=7, seed=1)
    p = softmax(reference.numpy().astype(np.float64), axis=1)
    q = softmax(compressed.numpy().astype(np.float64), axis=1)
    expected = float(np.mean(1.0 - jensenshannon(p, q, base=2, axis=1)))
    report = agreement(reference, compressed)
    assert report.probability_loyalty == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_probability_loyalty_identical_and_zero_probabilities() -> None:
    reference, _, _ = _random_data(n=32, classes=5, seed=2)
    assert agreement(reference, reference.clone()).probability_loyalty == 1.0
    # p = [1/2, 1/2], q = [1, 0] (exp(-1000) underflows to an exact 0): m = [3/4, 1/4]
    # JS = (KL(p||m) + KL(q||m)) / 2 = (0.5 log2(2/3) + 0.5 log2(2) + log2(4/3)) / 2 = 0.31128
    # loyalty = 1 - sqrt(0.31128) = 0.44207 (taking the root twice would give 0.2531)
    report = agreement([[0.0, 0.0]], [[0.0, -1000.0]])
    js = (0.5 * math.log2(2 / 3) + 0.5 + math.log2(4 / 3)) / 2
    assert report.probability_loyalty == pytest.approx(1 - math.sqrt(js), rel=1e-12)
    assert report.probability_loyalty == pytest.approx(0.44207, abs=1e-5)
    expected = 1 - jensenshannon([0.5, 0.5], [1.0, 0.0], base=2)
    assert report.probability_loyalty == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("labelled", [True, False])
def test_meter_over_batches_equals_one_shot(labelled: bool) -> None:
    reference, compressed, targets = _random_data()
    meter = AgreementMeter(topk=(1, 3, 5))
    edges = [0, 100, 101, 357, 640, 1000]
    for start, stop in itertools.pairwise(edges):
        meter.update(
            reference[start:stop],
            compressed[start:stop],
            targets[start:stop] if labelled else None,
        )
    assert meter.samples == 1000
    want = agreement(reference, compressed, targets if labelled else None, topk=(1, 3, 5))
    assert want.mismatches > 0 and want.probability_loyalty is not None
    assert len(want.per_class_mismatch_rate) == 10 and set(want.topk_agreement) == {1, 3, 5}
    _assert_reports_close(meter.compute(), want)


def test_meter_with_label_inputs_equals_one_shot() -> None:
    reference, compressed, _ = _random_data(seed=3)
    ref_labels, comp_labels = reference.argmax(1), compressed.argmax(1)
    meter = AgreementMeter()
    for chunk in range(0, 1000, 300):
        meter.update(ref_labels[chunk : chunk + 300], comp_labels[chunk : chunk + 300])
    _assert_reports_close(meter.compute(), agreement(ref_labels, comp_labels))


def test_mixed_labelled_and_unlabelled_batches() -> None:
    reference, compressed, targets = _random_data(n=400, seed=4)
    meter = AgreementMeter()
    meter.update(reference[:150], compressed[:150], targets[:150])
    meter.update(reference[150:], compressed[150:])
    report = meter.compute()
    labelled_part = agreement(reference[:150], compressed[:150], targets[:150])
    unlabelled_part = agreement(reference[150:], compressed[150:])
    assert report.samples == 400 and report.labelled == 150
    assert report.mismatches == labelled_part.mismatches + unlabelled_part.mismatches
    for name in (
        "negative_flips",
        "negative_flip_rate",
        "positive_flips",
        "positive_flip_rate",
        "negative_flip_impact",
        "reference_accuracy",
        "compressed_accuracy",
    ):
        assert getattr(report, name) == pytest.approx(getattr(labelled_part, name)), name
    # Per class: a labelled sample's class is its target, an unlabelled one's the reference label
    keys = torch.cat([targets[:150], reference[150:].argmax(1)])
    mismatch = reference.argmax(1) != compressed.argmax(1)
    for cls, rate in report.per_class_mismatch_rate.items():
        assert rate == pytest.approx(mismatch[keys == cls].double().mean().item()), cls
    assert report.probability_loyalty == pytest.approx(
        agreement(reference, compressed).probability_loyalty
    )


def test_state_dict_round_trip_through_json() -> None:
    reference, compressed, targets = _random_data(n=300, seed=5)
    meter = AgreementMeter(topk=(1, 2))
    meter.update(reference[:100], compressed[:100], targets[:100])
    meter.update(reference[100:200].argmax(1), compressed[100:200])
    state = json.loads(json.dumps(meter.state_dict()))
    resumed = AgreementMeter(topk=(2, 1))
    resumed.load_state_dict(state)
    assert resumed.samples == 200
    for m in (meter, resumed):
        m.update(reference[200:], compressed[200:], targets[200:])
    _assert_reports_close(resumed.compute(), meter.compute())


def test_load_state_dict_rejects_bad_state_and_keeps_counts() -> None:
    meter = AgreementMeter()
    meter.update(REF, COMP, TARGETS)
    before = meter.compute()
    with pytest.raises(ConfigError, match=r"topk \(1, 5\).*topk \(1, 3\)"):
        AgreementMeter(topk=(1, 3)).load_state_dict(meter.state_dict())
    broken = meter.state_dict()
    del broken["counts"]["mismatches"]
    with pytest.raises(ConfigError, match="state_dict"):
        meter.load_state_dict(broken)
    with pytest.raises(ConfigError, match="format"):
        meter.load_state_dict({**meter.state_dict(), "format": 99})
    assert meter.compute() == before


def test_merge_equals_one_shot() -> None:
    reference, compressed, targets = _random_data(seed=6)
    first, second, third = AgreementMeter(), AgreementMeter(), AgreementMeter()
    first.update(reference[:400], compressed[:400], targets[:400])
    second.update(reference[400:700], compressed[400:700], targets[400:700])
    second.update(reference[700:], compressed[700:], targets[700:])
    assert first.merge(second).merge(third) is first
    _assert_reports_close(first.compute(), agreement(reference, compressed, targets))


def test_merge_rejects_incompatible_meters() -> None:
    ten, three = AgreementMeter(), AgreementMeter()
    ten.update(torch.zeros(2, 10), torch.zeros(2, 10))
    three.update(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ShapeMismatchError, match=r"10 classes.*3"):
        ten.merge(three)
    with pytest.raises(ConfigError, match="topk"):
        ten.merge(AgreementMeter(topk=(1,)))


def test_reset_and_compute_before_update() -> None:
    meter = AgreementMeter()
    with pytest.raises(ShapeMismatchError, match="no samples yet"):
        meter.compute()
    meter.update(REF, COMP)
    meter.reset()
    assert meter.samples == 0
    with pytest.raises(ShapeMismatchError, match="no samples yet"):
        meter.compute()
    meter.update(torch.zeros(2, 4), torch.zeros(2, 4))  # a new class count is fine after reset
    assert meter.samples == 2


def test_meter_grows_classes_for_large_labels_and_keeps_no_tensors() -> None:
    meter = AgreementMeter()
    meter.update([10**9, 5], [10**9, 4])
    meter.update([7], [7], [10**12])
    report = meter.compute()
    assert report.per_class_mismatch_rate == {5: 1.0, 10**9: 0.0, 10**12: 0.0}
    json.dumps(meter.state_dict())  # plain Python numbers only


def test_meter_accepts_grad_tensors() -> None:
    reference = torch.randn(8, 4, requires_grad=True)
    report = agreement(reference * 2, reference)
    assert report.mismatches == 0
    assert report.probability_loyalty is not None and report.probability_loyalty < 1.0


def test_report_to_dict_and_str() -> None:
    report = agreement(REF_LOGITS, COMP_LOGITS, [0, 1, 2, 2], topk=(1, 2))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["per_class_mismatch_rate"] == {"0": 1.0, "1": 1.0, "2": 0.5}
    assert data["topk_agreement"] == {"1": 0.25, "2": 0.75}
    assert data["mismatches"] == 3 and data["labelled"] == 4
    text = str(agreement(REF, COMP, TARGETS))
    assert "mismatches 3/6 (50.00%)" in text
    assert "negative flips 2/6 (33.33%)" in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("reference", "compressed", "targets", "pattern"),
    [
        (
            torch.zeros(4, 3),
            torch.zeros(5, dtype=torch.long),
            None,
            r"`compressed` has 5 .*\(5,\).*\(4, 3\)",
        ),
        (torch.zeros(4), torch.zeros(4, 3), torch.zeros(3), r"`reference`.*\(4,\).*float"),
        ([0, 1], [0, 1], [0, 1, 2], r"`targets` has 3 samples \(shape \(3,\)\).*\(2,\)"),
        (torch.zeros(4, 3), torch.zeros(4, 5), None, r"\(4, 3\).*\(4, 5\).*classes"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 3), None, r"`reference`.*\(2, 3, 4\).*\(N, C\)"),
        ([0, 1], torch.zeros(2, 1), None, r"`compressed`.*\(2, 1\).*C >= 2"),
        ([0, 1], [0, 1], torch.zeros(2), r"`targets`.*\(2,\).*integer"),
        ([0, 1], [0, 1], torch.zeros(2, 1, dtype=torch.long), r"`targets`.*\(2, 1\)"),
        (torch.zeros(0, 3), torch.zeros(0, 3), None, r"\(0, 3\).*nothing to compare"),
        ([], [], None, r"\(0,\).*nothing to compare"),
        ([True, False], [0, 1], None, r"`reference`.*bool"),
        ([[0, 1], [2]], [0, 1], None, r"`reference` cannot be read as a tensor"),
    ],
)
def test_bad_inputs_raise_shape_mismatch(
    reference: object, compressed: object, targets: object, pattern: str
) -> None:
    with pytest.raises(ShapeMismatchError, match=pattern):
        agreement(reference, compressed, targets)  # type: ignore[arg-type]


def test_class_count_change_between_batches() -> None:
    meter = AgreementMeter()
    meter.update(torch.zeros(2, 10), [0, 1])
    with pytest.raises(ShapeMismatchError, match=r"9 classes \(shape \(3, 9\)\).*had 10"):
        meter.update([0, 1, 2], torch.zeros(3, 9))
    assert meter.samples == 2


def test_non_finite_logits() -> None:
    with pytest.raises(NonFiniteError, match="`compressed`"):
        agreement(torch.zeros(2, 3), torch.tensor([[0.0, float("nan"), 1.0], [0.0, 1.0, 2.0]]))


@pytest.mark.parametrize("topk", [(0,), (1, -2), (1.5,), (True,)])
def test_bad_topk(topk: tuple[object, ...]) -> None:
    with pytest.raises(ConfigError, match="topk"):
        AgreementMeter(topk=topk)  # type: ignore[arg-type]
