"""The CLI's stderr console and its one way of turning errors into exit codes."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from rich.console import Console
from rich.markup import escape

from basekiln.errors import BasekilnError

P = ParamSpec("P")
R = TypeVar("R")

stderr = Console(stderr=True)


def handles_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Print a basekiln error for a person and exit with its code (tracebacks with -v).

    Messages are printed verbatim: they quote config tables like `[archives.x]`, which
    rich would otherwise take for markup and drop.
    """

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except BasekilnError as exc:
            if logging.getLogger().level <= logging.DEBUG:
                traceback.print_exc(file=sys.stderr)
            stderr.print(
                f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True
            )
            sys.exit(int(exc.exit_code))

    return wrapper
