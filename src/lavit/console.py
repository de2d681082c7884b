"""What long CLI runs print: one line per stage (`say`) and progress bars, without library chatter."""

from __future__ import annotations

import warnings


class MissingDependency(ImportError):
    """An optional package a command was asked to use is not installed; the message says how to install it (the
    CLI prints it as an error, not a traceback)."""


class EndpointError(RuntimeError):
    """A service a command was pointed at (an OpenAI-compatible judge) is unreachable or answered badly; the
    message names it (the CLI prints it as an error, not a traceback)."""


def quiet_libraries() -> None:
    """No library warnings or weight-loading/saving bars on the console (errors still show)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def say(message: str) -> None:
    print(message, flush=True)
