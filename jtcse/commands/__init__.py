"""The sub-commands of ``jtcse``: one module per command or small family, each defining
``<name>_command_parser(subparsers)`` (adds its sub-command(s) to the root parser, :mod:`jtcse.cli`) and
``<name>_command(args)`` (runs one). A command module never imports the root CLI, and imports torch,
transformers, optuna and the like inside its command functions: ``jtcse --help`` imports every module here."""
