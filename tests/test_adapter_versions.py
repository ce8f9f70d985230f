"""Each framework's supported versions are written once: in the adapter's own pyproject."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from labelkeep_plugins.errors import PluginError
from labelkeep_plugins.zero_code.adapters import (
    PatchingAdapter,
    check_compatibility,
    declared_range,
)

tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later
ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = {  # adapter distribution -> the framework it patches
    "labelkeep-nni": "nni",
    "labelkeep-torch-pruning": "torch-pruning",
    "labelkeep-brevitas": "brevitas",
}


def _pins(pyproject: Path) -> dict[str, set[str]]:
    """Every framework pin in a pyproject, dependencies and extras alike."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    lines = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        lines += extra
    pins: dict[str, set[str]] = {}
    for line in lines:
        requirement = Requirement(line)
        pins.setdefault(canonicalize_name(requirement.name), set()).add(str(requirement.specifier))
    return pins


def test_every_pin_on_a_framework_agrees_with_its_adapters_pin() -> None:
    adapter_pins = {
        framework: _pins(ROOT / "adapters" / distribution / "pyproject.toml")[framework]
        for distribution, framework in ADAPTERS.items()
    }
    pyprojects = [ROOT / "pyproject.toml", *(ROOT / "adapters").glob("*/pyproject.toml")]
    for pyproject in pyprojects:
        for framework, specifiers in _pins(pyproject).items():
            if framework in adapter_pins:
                assert specifiers == adapter_pins[framework], (pyproject, framework)


@pytest.mark.parametrize(("distribution", "framework"), ADAPTERS.items())
def test_an_adapters_supported_range_is_its_distributions_pin(
    distribution: str, framework: str
) -> None:
    pytest.importorskip(distribution.replace("-", "_"))
    from labelkeep_plugins.zero_code.instrument import registered_adapters

    (adapter,) = [a for a in registered_adapters() if a.framework == framework]
    pin = Requirement(f"{framework}{adapter.supported}").specifier
    assert pin == Requirement(f"x{declared_range(distribution, framework)}").specifier
    assert str(pin) in _pins(ROOT / "adapters" / distribution / "pyproject.toml")[framework]


class Orphan(PatchingAdapter):
    name = "orphan"
    framework = "pluggy"  # installed, so the version is read; the distribution is not
    distribution = "labelkeep-no-such-adapter"


def test_a_range_that_cannot_be_read_names_the_distribution_and_the_fix() -> None:
    with pytest.raises(PluginError, match=r"labelkeep-no-such-adapter.*pip install"):
        declared_range("labelkeep-no-such-adapter", "nni")
    with pytest.raises(PluginError, match="requires no brevitas version"):
        declared_range("pluggy", "brevitas")  # installed, and requires no brevitas
    verdict = check_compatibility(Orphan())
    assert not verdict.ok and "labelkeep-no-such-adapter" in verdict.reason
