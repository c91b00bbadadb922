"""A ``DataSpec`` knows its class count and chance level, whatever the data set."""

from __future__ import annotations

import pytest

from harness.data import DataSpec


@pytest.mark.parametrize(("spec", "classes"), [
    (DataSpec("cifar10"), 10),
    (DataSpec("cifar100"), 100),
    (DataSpec("synthetic"), 10),
    (DataSpec("synthetic", synthetic_classes=16), 16),
    (DataSpec("cifar100", synthetic_classes=16), 100),  # a real data set keeps its own
])
def test_a_spec_knows_its_classes_and_chance(spec, classes):
    assert spec.num_classes == classes
    assert spec.chance == pytest.approx(1 / classes)


@pytest.mark.parametrize("name", ["synthetic", "cifar10", "cifar100"])
def test_a_dry_run_keeps_the_class_count(name):
    spec = DataSpec(name, synthetic_classes=12)
    dry = spec.dry_run()
    assert dry.name == "synthetic" and dry.num_classes == spec.num_classes
