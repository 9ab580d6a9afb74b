"""The ``fleetwatch`` command line: one entry point, one module per command in ``commands/``.

Each command module declares its :class:`~fleetwatch.cli.parser.Command` (summary, examples,
the settings it uses, its arguments) and a thin handler over the library: parsing, settings
and errors are :mod:`fleetwatch.cli.main`'s.
"""

from fleetwatch.cli.main import main, parser, run

__all__ = ["main", "parser", "run"]
