"""Check the files of ``snakemake --configfile`` before Snakemake reads them: a missing or malformed one is one line.

Snakemake (9.x) reads ``--configfile`` files itself, before any line of the
Snakefile runs, and reports a missing one with a traceback and a malformed one
without naming the file or the line. The workflow profile ``profiles/default``,
which Snakemake evaluates first for every run in the repository root (its YTE
``__definitions__``), calls :func:`check_configfiles`, which reads each named
file with :func:`onepixel.config.read_config_file` and stops with
``error: <file>:<line>:<column>: ...`` and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from onepixel.config import read_config_file
from onepixel.errors import ConfigError

_OPTIONS = ("--configfile", "--configfiles")


def configfiles(argv: Sequence[str]) -> list[str]:
    """The files given to ``--configfile``/``--configfiles`` in a Snakemake command line (``nargs="+"``)."""
    files: list[str] = []
    taking = False
    for arg in argv:
        name, equals, value = arg.partition("=")
        if name in _OPTIONS:
            taking = not equals
            if equals:
                files.append(value)
        elif arg.startswith("-"):
            taking = False
        elif taking:
            files.append(arg)
    return files


def check_configfiles(argv: Sequence[str] | None = None) -> None:
    """Stop with one line ``error: ...`` (exit status 2) if a ``--configfile`` file is missing or malformed."""
    for file in configfiles(sys.argv[1:] if argv is None else argv):
        try:
            read_config_file(file)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
