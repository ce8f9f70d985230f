"""The ``labelkeep`` logger: the lines the library and zero-code activation say on stderr.

Why a logger rather than ``print``: the lines (session warnings and contained failures,
auto mode, plugin loading, the runner's notices, adapters' notices) stay as they were, but a
user can silence them or send them elsewhere with the standard library alone::

    import logging

    logging.getLogger("labelkeep").setLevel(logging.ERROR)  # silence: errors only
    logging.getLogger("labelkeep").handlers = [logging.FileHandler("labelkeep.log")]  # redirect

By default each record is written as ``labelkeep: MESSAGE`` (the exact line labelkeep printed
before it had a logger) to whatever ``sys.stderr`` is when the record is emitted, so that
redirected stderr and pytest's ``capsys``/``capfd`` see it. The handler is attached once, at
the import of this module, and only if the logger has no handler yet (one the user put there
first is kept); the logger then does not propagate, so that a root logger the application
configured does not print each line a second time. The default level is INFO, which hides
none of the messages. Adapters use this logger too, through
:mod:`labelkeep_plugins.zero_code.adapter_api`, never one of their own.

``logging.config.dictConfig`` and ``fileConfig`` disable, by default, every logger that exists
before they run, this one included: name ``labelkeep`` in the configuration, or pass
``disable_existing_loggers=False``, to keep its lines.

Lines said while ``labelkeep run`` activates a process (before the script's first line) come
before the script can change any of this; warnings during training and lines at exit follow it.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOGGER_NAME = "labelkeep"
LINE_FORMAT = "labelkeep: %(message)s"


class StderrHandler(logging.StreamHandler):
    """A stream handler on ``sys.stderr`` as it is at emit time, not as it was at creation."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        logging.Handler.__init__(self, level)  # StreamHandler's own would store a stream

    @property
    def stream(self) -> TextIO:
        return sys.stderr


logger = logging.getLogger(LOGGER_NAME)
if not logger.handlers:
    _handler = StderrHandler()
    _handler.setFormatter(logging.Formatter(LINE_FORMAT))
    logger.addHandler(_handler)
    logger.propagate = False
if logger.level == logging.NOTSET:  # a level the user set before this import is kept
    logger.setLevel(logging.INFO)
