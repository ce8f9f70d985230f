"""The ``labelkeep`` command: its subcommands, the plugin inventory and the demo."""
