"""Which rows (methods) a bench has: the profile's or ``--methods``, less what cannot run.

A row whose tuner or loss term is not registered (or ``tuned`` without tuning trials) is
left out with a note that says why and how it appears, rather than failing every run.
"""

from __future__ import annotations

from collections.abc import Sequence

from labelkeep_plugins.bench.cells import Profile
from labelkeep_plugins.bench.plan import FM, KNOWN_METHODS, PLAIN, SOFTADAPT, TUNED

_TUNER_ROWS = (SOFTADAPT,)  # rows named after the tuner they run


def choose_methods(
    profile: Profile, requested: Sequence[str], trials: int
) -> tuple[tuple[str, ...], list[str]]:
    """The rows to run, in the table's order, and a note for each row left out."""
    names = list(requested or profile.methods)
    notes = []
    if not requested and TUNED not in names:
        if trials > 0:
            names.append(TUNED)
        else:
            notes.append(
                f"no tuned row: no tuning trials in the {profile.name} profile "
                "(--trials N searches N settings per cell on validation seeds)"
            )
    if PLAIN not in names:
        names.append(PLAIN)
        notes.append("plain recovery runs too: every reduction is measured against it")
    chosen = []
    for name in sorted(dict.fromkeys(names), key=KNOWN_METHODS.index):
        why = unavailable_method(name, trials)
        if why:
            notes.append(f"no {name} row: {why}")
        else:
            chosen.append(name)
    return tuple(chosen), notes


def unavailable_method(name: str, trials: int) -> str | None:
    """Why the row cannot run here, or None."""
    from labelkeep_plugins.plugins import loss_terms, tuner_factories

    if name == TUNED and trials == 0:
        return "--trials 0"
    if name in _TUNER_ROWS and name not in tuner_factories():
        return (
            f"no tuner named {name!r} is registered (labelkeep plugins lists the tuners); "
            "it appears here once one is"
        )
    if name == FM and FM not in loss_terms():
        return (
            "no loss term named 'fm' is registered (labelkeep plugins lists the terms); "
            "it appears here once one is"
        )
    return None
