"""Shared fixtures: tiny classifiers and data that need no download.

The run also gets a home folder of its own (see :func:`pytest_configure`), and NNI's
web portal, when a test starts one, listens on loopback only.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from labelkeep_plugins import plugins

REAL_HOME = Path.home()  # read when pytest loads this file, before pytest_configure moves HOME
LOOPBACK_PRELOAD = Path(__file__).resolve().parents[1] / "examples/nni_experiment/loopback.cjs"
_SAVED_ENVIRONMENT: dict[str, str | None] = {}
_REAL_HOME_BEFORE: dict[str, tuple[int, int]] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Point HOME at a fresh folder before any test module imports NNI.

    NNI writes its experiment list to ``~/nni-experiments/.experiment`` whatever
    ``experiment_working_directory`` says: Python reads ``~`` once, when
    ``nni.tools.nnictl.constants`` is imported, and the manager (Node) reads
    ``os.homedir()``, i.e. ``$HOME``. Test modules import NNI at collection, so a fixture
    would be too late. Subprocesses inherit both variables. ``NODE_OPTIONS`` preloads
    examples/nni_experiment/loopback.cjs, which binds the manager's portal to 127.0.0.1.
    """
    _REAL_HOME_BEFORE.update(real_home_state())
    home = tempfile.mkdtemp(prefix="labelkeep-tests-home-")
    node_options = os.environ.get("NODE_OPTIONS", "")
    _set_environment(
        HOME=home,
        NODE_OPTIONS=f"{node_options} --require={LOOPBACK_PRELOAD}".strip(),
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if it wrote NNI's files, or a new top-level entry, into the real home."""
    changed = real_home_changes(_REAL_HOME_BEFORE, real_home_state())
    if not changed:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    line = f"tests wrote into the real home {REAL_HOME}: {', '.join(changed)}"
    if reporter is not None:
        reporter.write(f"\n{line}\n", red=True, bold=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put HOME and NODE_OPTIONS back and remove the run's home."""
    home = os.environ.get("HOME")
    _restore_environment()
    if home and Path(home).name.startswith("labelkeep-tests-home-"):
        shutil.rmtree(home, ignore_errors=True)


def real_home_state() -> dict[str, tuple[int, int]]:
    """(mtime, size) of the real home's top-level entries and of ``nni-experiments``' files."""
    state: dict[str, tuple[int, int]] = {}
    nni_folder = REAL_HOME / "nni-experiments"
    for folder, prefix in ((REAL_HOME, ""), (nni_folder, "nni-experiments/")):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            info = entry.lstat()
            keep = bool(prefix) or entry == nni_folder
            state[prefix + entry.name] = (info.st_mtime_ns, info.st_size) if keep else (0, 0)
    return state


def real_home_changes(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> list[str]:
    """Entries that appeared, or NNI files that changed; others' edits to old files are theirs."""
    return sorted(name for name, stamp in after.items() if before.get(name) != stamp)


def _set_environment(**values: str) -> None:
    for name, value in values.items():
        _SAVED_ENVIRONMENT.setdefault(name, os.environ.get(name))
        os.environ[name] = value


def _restore_environment() -> None:
    for name, value in _SAVED_ENVIRONMENT.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _SAVED_ENVIRONMENT.clear()


class TinyCNN(nn.Module):
    """A 1-D CNN with batch norm, the shape of a compressed-then-recovered classifier."""

    def __init__(self, channels: int = 8, classes: int = 5, length: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, channels, 3, padding=1)
        self.bn = nn.BatchNorm1d(channels)
        self.fc = nn.Linear(channels * length, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x.unsqueeze(1))))
        return self.fc(h.flatten(1))


def perturbed(model: nn.Module, scale: float = 0.1, seed: int = 1) -> nn.Module:
    """A copy of ``model`` with noise on its weights: a stand-in for a compressed student."""
    student = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return student


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch):
    """Each test starts with a plugin manager that re-reads the environment."""
    for name in (
        "LABELKEEP_PLUGINS",
        "LABELKEEP_DISABLE_PLUGIN_AUTOLOAD",
        "LABELKEEP_DISABLED_ADAPTERS",
        "LABELKEEP_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
    plugins.reset_plugins()
    yield
    plugins.reset_plugins()


@pytest.fixture
def reference_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN()


@pytest.fixture
def student(reference_model: nn.Module) -> nn.Module:
    return perturbed(reference_model)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(12, 16, generator=generator), torch.randint(0, 5, (12,), generator=generator)
