"""labelkeep's stderr lines go through the ``labelkeep`` logger: same text by default, and a
user can silence them (``setLevel``) or send them elsewhere (its handlers)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from labelkeep_plugins.log import LOGGER_NAME, logger
from labelkeep_plugins.zero_code.notices import Notices

SAY = "from labelkeep_plugins.zero_code.notices import Notices; Notices('mylib').say('it broke')"


class Collector(logging.Handler):
    """A user's handler: keeps the records it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def restore_logger() -> Iterator[None]:
    """Each test may change the logger's level and handlers; the next one gets them back."""
    level, handlers, propagate = logger.level, list(logger.handlers), logger.propagate
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers
    logger.propagate = propagate


def test_the_logger_is_the_one_users_configure_by_name() -> None:
    from labelkeep_plugins.zero_code import adapter_api

    assert logger is logging.getLogger("labelkeep") and LOGGER_NAME == "labelkeep"
    assert adapter_api.logger is logger  # adapters get the host's logger, not their own
    assert "logger" in adapter_api.__all__


def test_a_warning_is_on_stderr_with_the_same_text_by_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    Notices("mylib").say("it broke; do this")
    assert capsys.readouterr().err == "labelkeep: mylib: it broke; do this\n"


def test_a_fresh_process_prints_the_same_line_and_nothing_else() -> None:
    """No pytest capture here: the handler labelkeep attaches at import, on its own."""
    result = subprocess.run(
        [sys.executable, "-I", "-c", SAY], capture_output=True, text=True, check=True
    )
    assert (result.stdout, result.stderr) == ("", "labelkeep: mylib: it broke\n")


def test_a_level_set_before_labelkeep_is_imported_is_kept() -> None:
    code = f"import logging; logging.getLogger('labelkeep').setLevel(logging.ERROR); {SAY}"
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stderr == ""


def test_setlevel_error_silences_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("labelkeep").setLevel(logging.ERROR)
    Notices("mylib").say("it broke")
    assert capsys.readouterr().err == ""
    logger.error("still said")  # errors are not silenced by ERROR
    assert capsys.readouterr().err == "labelkeep: still said\n"


def test_a_handler_the_user_puts_in_receives_the_record(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mine = Collector()
    logging.getLogger("labelkeep").handlers = [mine]  # redirect: stderr no longer gets it
    Notices("mylib").say("it broke")
    assert [(r.name, r.levelno, r.getMessage()) for r in mine.records] == [
        ("labelkeep", logging.WARNING, "mylib: it broke")
    ]
    assert capsys.readouterr().err == ""


def test_the_root_logger_does_not_print_it_a_second_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = Collector()
    logging.getLogger().addHandler(root)
    try:
        Notices("mylib").say("it broke")
    finally:
        logging.getLogger().removeHandler(root)
    assert root.records == []
    assert capsys.readouterr().err == "labelkeep: mylib: it broke\n"
