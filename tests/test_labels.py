"""One reading of class labels from a loss's target, shared by the injector, loss and tuners."""

from __future__ import annotations

import torch

from labelkeep_plugins.loss.labels import class_labels, valid_labels


def test_indices_and_probabilities_both_give_detached_indices() -> None:
    indices = torch.tensor([2, 0, 1])
    assert torch.equal(class_labels(indices), indices)
    probabilities = torch.tensor([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1], [0.2, 0.5, 0.3]])
    probabilities.requires_grad_(True)
    read = class_labels(probabilities)
    assert torch.equal(read, indices) and not read.requires_grad


def test_targets_that_hold_no_labels_give_none() -> None:
    assert class_labels(None) is None
    assert class_labels([0, 1]) is None
    assert class_labels(torch.zeros(2, 3, dtype=torch.long)) is None  # not (N,) indices
    assert class_labels(torch.zeros(4)) is None  # a float vector: a regression target


def test_an_ignore_index_stays_in_place_and_is_masked() -> None:
    labels = class_labels(torch.tensor([1, -100, 4, 255]))
    assert labels.tolist() == [1, -100, 4, 255]  # no filtering: no step waits on the device
    assert valid_labels(labels, classes=5).tolist() == [True, False, True, False]
