"""The injector: how the label-preserving loss enters training loops labelkeep does not own."""

from labelkeep_plugins.injector.attach import InjectionHandle, InjectionStats, attach, loss_config

__all__ = ["InjectionHandle", "InjectionStats", "attach", "loss_config"]
