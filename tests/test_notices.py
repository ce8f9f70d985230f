"""Adapters' warnings are said once, through the session when there is one."""

from __future__ import annotations

import pytest

from labelkeep_plugins import Config
from labelkeep_plugins.zero_code.adapter_api import Notices
from labelkeep_plugins.zero_code.instrument import instrumented


def test_before_a_session_a_warning_goes_to_stderr_once(capsys: pytest.CaptureFixture[str]) -> None:
    notices = Notices("mylib")
    assert notices.warn("k", "first") is True
    assert notices.warn("k", "first again, same key") is False
    assert notices.say("second") is True and notices.say("second") is False
    assert capsys.readouterr().err.splitlines() == [
        "labelkeep: mylib: first",
        "labelkeep: mylib: second",
    ]
    assert notices.lines == ["first", "second"]


def test_with_a_session_a_warning_reaches_the_report_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    notices = Notices("mylib")
    with instrumented(Config()) as session:
        notices.session = session
        notices.say("masks regrew")
        notices.say("masks regrew")
        report = session.report()
    assert report["warnings"].count("mylib: masks regrew") == 1
    assert capsys.readouterr().err.count("labelkeep: mylib: masks regrew") == 1
    notices.clear()
    assert notices.lines == [] and notices.say("masks regrew") is True


def test_an_adapters_notices_follow_its_session() -> None:
    """The base adapter owns the notices: a warning after uninstrument reaches no dead session."""
    from labelkeep_plugins.zero_code.adapter_api import PatchingAdapter

    class Quiet(PatchingAdapter):
        name = "quiet"

        def install(self, session: object) -> None:
            pass

    adapter = Quiet()
    with instrumented(Config()) as session:
        adapter.instrument(session)
        assert adapter.notices.session is session
        adapter.uninstrument()
    assert adapter.notices.session is None
