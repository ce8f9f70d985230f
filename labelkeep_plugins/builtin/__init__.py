"""Built-in plugins: labelkeep's own loss terms, tuners and reporters, registered like any other."""

DEFAULT_PLUGINS: tuple[str, ...] = (
    "labelkeep_plugins.builtin.terms",
    "labelkeep_plugins.builtin.tuners",
    "labelkeep_plugins.builtin.reporters",
)
