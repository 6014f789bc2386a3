"""The ``vtr`` command's subcommands, one module each (``vtr.cli`` dispatches).

Every module has ``HELP`` (its one-line summary), ``add_arguments(parser)`` and ``run(args) -> int``.
Module level imports only the standard library and light vtr modules; torch, transformers and the
heavy vtr packages are imported inside ``run``, so ``vtr --help``, ``vtr methods`` and a command's
``--help`` start without them. This is the top layer: commands import the API, adapters and
measurement code; nothing below imports a command.
"""
