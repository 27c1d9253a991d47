"""The error tree: every failure a person sees carries what failed, where, and what to do."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes the CLI documents."""

    OK = 0
    FAILURE = 1
    INPUT = 2
    NOT_REPRODUCIBLE = 3
    VERIFICATION = 4
    INTERRUPTED = 130


class BasekilnError(Exception):
    """Root of basekiln's errors; the message is written for a person."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(BasekilnError):
    """A recipe, lockfile, config or argument the user must fix."""

    exit_code = ExitCode.INPUT


class RecipeError(InputError):
    """A recipe that does not parse or validate; lists every problem at once."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"{path}: {count}; fix the recipe and run again:\n{lines}")


class LockfileError(InputError):
    """A lockfile that is missing, stale, malformed or edited by hand."""


class ResolveError(InputError):
    """The recipe's packages cannot be satisfied from the archive."""


class TrustError(BasekilnError):
    """A signature or checksum in the chain from InRelease to .deb did not hold."""


class FetchError(BasekilnError):
    """A download failed on every mirror, or gave the wrong bytes."""


class ToolError(BasekilnError):
    """An external program failed or is missing."""


class BuildError(BasekilnError):
    """An image build or an image test failed."""


class NotReproducibleError(BasekilnError):
    """The two builds of one image gave different digests."""

    exit_code = ExitCode.NOT_REPRODUCIBLE


class VerificationError(BasekilnError):
    """A signature, attestation or policy check failed."""

    exit_code = ExitCode.VERIFICATION


class InterruptedRunError(BasekilnError):
    """SIGINT or SIGTERM arrived; everything started was torn down on the way out."""

    exit_code = ExitCode.INTERRUPTED
