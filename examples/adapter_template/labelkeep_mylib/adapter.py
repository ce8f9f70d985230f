"""The adapter: where mylib first changes a model, and how its model reaches a training loop.

Replace ``mylib.Pruner`` with the class (or function) of your framework that is
handed the uncompressed model. Call the framework's original outside the guard,
so a failure in labelkeep's part never stops the user's run.
"""

from __future__ import annotations

import sys
from typing import Any

from labelkeep_plugins.zero_code.adapter_api import PatchingAdapter, Session


class MylibAdapter(PatchingAdapter):
    name = "mylib"
    framework = "mylib"  # the distribution name pip knows; its version is read from metadata
    distribution = "labelkeep-mylib"  # its pin on mylib (pyproject.toml) is the supported range
    module = "mylib"  # instrument() runs when the user's script first imports this module

    def install(self, session: Session) -> None:
        pruner_class = sys.modules["mylib"].Pruner
        original_init = pruner_class.__init__
        adapter = self

        def patched_init(pruner: Any, model: Any, *args: Any, **kwargs: Any) -> None:
            with session.guard(adapter.name):
                # The last moment the model is still uncompressed: take the reference.
                session.reference_for(model, framework="mylib", where="Pruner.__init__")
                # The root module survives pruning: the user's loop trains it from here on.
                session.attach(model)
            original_init(pruner, model, *args, **kwargs)

        self.patches.patch(pruner_class, "__init__", patched_init)
