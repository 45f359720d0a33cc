"""The ``emmax`` subcommands, one module per command (or group). Each command parses its
options, makes one library call and formats the result; heavy imports stay inside the
command bodies so that ``emmax --help`` loads neither torch, transformers nor faiss.
Shared options live in ``options.py``; ``docs.py`` renders ``docs/cli.md`` from ``--help``."""
