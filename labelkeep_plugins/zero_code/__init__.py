"""Zero-code activation: what adapters import (:mod:`.adapter_api`), patches that undo by
identity, import hooks, the session and its report, ``instrument()``, auto mode, the
runner and the ``sitecustomize`` bootstrap.
"""
