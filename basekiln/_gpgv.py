"""Thin wrapper around gpgv: verify a clearsigned file against a keyring."""

from __future__ import annotations

import tempfile
from pathlib import Path

from basekiln._run import CommandError, run
from basekiln.errors import TrustError

GPGV_TIMEOUT = 60


def verify_clearsigned(signed: bytes, keyring: Path, what: str) -> bytes:
    """Return the signed text of a clearsigned document, or raise TrustError.

    gpgv trusts exactly the keys in `keyring`; no agent, no trust database, and the
    status lines (not the exit code alone) must show a good signature.
    """
    if not keyring.is_file():
        raise TrustError(
            f"keyring {keyring} does not exist; install debian-archive-keyring "
            "(`make setup`) or set the archive's keyring in basekiln.toml"
        )
    with tempfile.TemporaryDirectory(prefix="basekiln-gpgv-") as tmp:
        signed_path = Path(tmp) / "InRelease"
        signed_path.write_bytes(signed)
        out_path = Path(tmp) / "out"
        try:
            result = run(
                [
                    "gpgv",
                    "--status-fd",
                    "1",
                    "--keyring",
                    str(keyring),
                    "--output",
                    str(out_path),
                    str(signed_path),
                ],
                timeout=GPGV_TIMEOUT,
            )
        except CommandError as exc:
            raise TrustError(
                f"{what}: OpenPGP signature does not verify against {keyring}; the file "
                f"may be tampered with or signed by an unknown key.\n{exc.stderr.strip()}"
            ) from exc
        status = result.stdout.decode("utf-8", errors="replace")
        if not any(line.startswith("[GNUPG:] VALIDSIG") for line in status.splitlines()):
            raise TrustError(f"{what}: gpgv reported no valid signature:\n{status}")
        return out_path.read_bytes()
