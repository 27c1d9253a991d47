"""The one runner for external commands: errors carry argv and stderr; timeouts hold."""

from __future__ import annotations

import time

import pytest

from basekiln._run import CommandError, run
from basekiln.errors import ExitCode, ToolError


def test_success_returns_output() -> None:
    done = run(["sh", "-c", "printf out; printf err >&2"], timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"out", "err")
    assert done.argv[0].endswith("sh")


def test_failure_carries_argv_exit_code_and_stderr() -> None:
    with pytest.raises(CommandError) as caught:
        run(["sh", "-c", "echo 'no such suite' >&2; exit 3"], timeout=30)
    error = caught.value
    assert isinstance(error, ToolError)
    assert error.exit_code is ExitCode.FAILURE
    assert error.argv[0].endswith("sh")
    assert error.argv[1:] == ("-c", "echo 'no such suite' >&2; exit 3")
    assert error.returncode == 3
    assert error.stderr.strip() == "no such suite"
    assert "sh failed with exit code 3" in error.message
    assert "no such suite" in error.message


def test_check_false_returns_the_failure() -> None:
    done = run(["sh", "-c", "exit 4"], timeout=30, check=False)
    assert done.returncode == 4


def test_input_and_environment_reach_the_program() -> None:
    done = run(
        ["sh", "-c", 'cat; printf "$GREETING"'], timeout=30, input=b"in-", env={"GREETING": "hi"}
    )
    assert done.stdout == b"in-hi"


def test_timeout_raises_with_argv() -> None:
    started = time.monotonic()
    with pytest.raises(CommandError) as caught:
        run(["sleep", "30"], timeout=0.5)
    assert time.monotonic() - started < 10
    assert caught.value.returncode is None
    assert caught.value.argv[-1] == "30"
    assert "sleep did not finish within" in caught.value.message


def test_missing_program_says_what_to_do() -> None:
    with pytest.raises(CommandError, match="no-such-program-basekiln is not installed"):
        run(["no-such-program-basekiln"], timeout=5)
