"""What the READMEs tell users to import exists: each ``from labelkeep_plugins import`` name
and each ``lk.<name>`` used after ``import labelkeep_plugins as lk``."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
READMES = [REPO / "README.md", REPO / "adapters" / "README.md"]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def _imported_names() -> set[tuple[str, str]]:
    names = set()
    for readme in READMES:
        for block in _python_blocks(readme):
            for module, imported in re.findall(
                r"^from (labelkeep_plugins\S*) import (.+)$", block, re.M
            ):
                names |= {(module, name.strip()) for name in imported.split(",")}
            if "import labelkeep_plugins as lk" in block:
                names |= {("labelkeep_plugins", name) for name in re.findall(r"\blk\.(\w+)", block)}
    return names


NAMES = sorted(_imported_names())


def test_the_readmes_import_something() -> None:
    assert len(NAMES) >= 8 and ("labelkeep_plugins", "LabelPreservingLoss") in NAMES


@pytest.mark.parametrize(("module", "name"), NAMES, ids=[f"{m}.{n}" for m, n in NAMES])
def test_each_name_the_readmes_use_exists(module: str, name: str) -> None:
    assert hasattr(importlib.import_module(module), name), f"{module}.{name}"


def test_every_document_the_code_or_a_readme_cites_is_in_the_repo() -> None:
    """Docstrings once cited notes (``docs/integration-notes.md``) that lived outside the repo.

    A ``*.md`` path with a folder in it cited by the code, and each relative link of the
    READMEs, must exist; bare names such as ``results.md`` are files the commands write.
    """
    cited = set()
    for path in [*REPO.glob("labelkeep_plugins/**/*.py"), *REPO.glob("adapters/**/*.py")]:
        text = path.read_text(encoding="utf-8")
        cited |= {c for c in re.findall(r"[\w.-]+(?:/[\w.-]+)+\.md\b", text) if c[:4] != "OUT/"}
    for readme in REPO.glob("**/README.md"):
        if ".venv" in readme.parts:
            continue
        for link in re.findall(r"\]\(([^)#:\s]+)\)", readme.read_text(encoding="utf-8")):
            cited.add(str((readme.parent / link).resolve().relative_to(REPO)))
    missing = [c for c in sorted(cited) if not (REPO / c).exists()]
    assert cited and missing == []
