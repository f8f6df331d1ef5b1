"""Subcommands of the `adapterlab` CLI; each module has `register(subparsers)`."""
