"""Weight tuners: the contract and the fixed tuner (:mod:`.base`), the catch-up gate and
SoftAdapt, registered through :mod:`.builtin` like any plugin's tuner.
"""
