"""The command line: one module per command group (analyze, extract, finetune, results), the shared
options and error boundary in :mod:`sdetool.cli.common`, the entry point in :mod:`sdetool.cli.entry`."""

from sdetool.cli.entry import app, main

__all__ = ["app", "main"]
