"""Promotion without a registry: references, the policy, the record, the CLI's refusals."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from basekiln import promote
from basekiln.cli_flows import promote as promote_command
from basekiln.config import PromotionConfig, load_config
from basekiln.evidence import SPDX_PREDICATE
from basekiln.promote import PromotionError, Verified, evaluate_policy, summary_predicate
from basekiln.provenance import DEFAULT_BUILDER_ID, REPRODUCIBLE_PREDICATE, SLSA_PROVENANCE
from basekiln.registry import parse_reference

DIGEST = "sha256:" + "c" * 64
OTHER = "sha256:" + "d" * 64
NOW = datetime(2026, 6, 10, tzinfo=UTC)
SOURCE = f"127.0.0.1:5000/staging/static@{DIGEST}"
PACKAGES = [("base-files", "12.4+deb12u5", "amd64"), ("tzdata", "2024a-0+deb12u1", "all")]


def spdx(packages: list[tuple[str, str, str]]) -> dict[str, Any]:
    return {
        "packages": [
            {
                "SPDXID": f"SPDXRef-Package-deb-{name}",
                "name": name,
                "versionInfo": version,
                "externalRefs": [
                    {
                        "referenceType": "purl",
                        "referenceLocator": f"pkg:deb/debian/{name}@{version}?arch={arch}",
                    }
                ],
            }
            for name, version, arch in packages
        ]
    }


def provenance(
    packages: list[tuple[str, str, str]], builder: str = DEFAULT_BUILDER_ID, finished: str = ""
) -> dict[str, Any]:
    deps = [
        {
            "uri": f"pkg:deb/debian/{name}@{version}?arch={arch}",
            "digest": {"sha256": "0" * 64},
            "annotations": {"role": "content"},
        }
        for name, version, arch in packages
    ]
    deps.append(
        {"uri": "pkg:deb/debian/busybox@1?arch=amd64", "annotations": {"role": "build-tool"}}
    )
    return {
        "buildDefinition": {"resolvedDependencies": deps},
        "runDetails": {
            "builder": {"id": builder},
            "metadata": {"finishedOn": finished or "2026-06-09T03:00:00+00:00"},
        },
    }


def verified(
    builds: list[str] | None = None,
    sbom: list[tuple[str, str, str]] | None = None,
    **provenance_args: Any,
) -> Verified:
    digests = [DIGEST, DIGEST] if builds is None else builds
    statements = {
        SPDX_PREDICATE: {"predicate": spdx(PACKAGES if sbom is None else sbom)},
        SLSA_PROVENANCE: {"predicate": provenance(PACKAGES, **provenance_args)},
        REPRODUCIBLE_PREDICATE: {
            "predicate": {"matched": True, "builds": [{"digest": d} for d in digests]}
        },
    }
    return Verified({k: (v,) for k, v in statements.items()}, {k: ("e" * 64,) for k in statements})


def failing(checks: tuple[promote.PolicyCheck, ...]) -> Mapping[str, str]:
    return {c.name: c.detail for c in checks if not c.passed}


def test_policy_passes_a_reproducible_consistent_recent_image() -> None:
    checks = evaluate_policy(PromotionConfig(), DIGEST, verified(), NOW)
    assert [c.name for c in checks] == ["reproducible", "sbom cross-check", "builder", "age"]
    assert failing(checks) == {}


@pytest.mark.parametrize(
    ("evidence", "policy", "rule", "detail"),
    [
        (verified(builds=[DIGEST]), PromotionConfig(), "reproducible", "1 matching builds"),
        (verified(builds=[DIGEST, OTHER]), PromotionConfig(), "reproducible", OTHER),
        (verified(sbom=PACKAGES[:1]), PromotionConfig(), "sbom cross-check", "tzdata"),
        (verified(builder="https://evil.invalid/b"), PromotionConfig(), "builder", "evil"),
        (
            verified(finished="2026-01-01T00:00:00+00:00"),
            PromotionConfig(),
            "age",
            "allows 30",
        ),
        (verified(finished="yesterday"), PromotionConfig(), "age", "no readable finishedOn"),
        (
            verified(),
            PromotionConfig(allowed_builders=["https://other.invalid/b"]),
            "builder",
            "not an allowed builder",
        ),
    ],
)
def test_each_policy_rule_can_refuse(
    evidence: Verified, policy: PromotionConfig, rule: str, detail: str
) -> None:
    problems = failing(evaluate_policy(policy, DIGEST, evidence, NOW))
    assert list(problems) == [rule]
    assert detail in problems[rule]


def test_rules_the_policy_does_not_require_pass() -> None:
    policy = PromotionConfig(require_reproducible=False, max_age_days=0)
    checks = evaluate_policy(policy, DIGEST, verified(builds=[], finished="long ago"), NOW)
    assert failing(checks) == {}
    assert checks[0].detail == "not required by the policy"


def test_a_missing_attestation_fails_the_rules_that_need_it() -> None:
    evidence = verified()
    partial = Verified({SLSA_PROVENANCE: evidence.statements[SLSA_PROVENANCE]}, {})
    problems = failing(evaluate_policy(PromotionConfig(), DIGEST, partial, NOW))
    assert set(problems) == {"reproducible", "sbom cross-check"}


def test_the_record_is_a_verification_summary() -> None:
    source = parse_reference(SOURCE)
    target = parse_reference("127.0.0.1:5000/release/static").by_digest(DIGEST)
    checks = evaluate_policy(PromotionConfig(), DIGEST, verified(), NOW)
    predicate = summary_predicate(
        source=source,
        destination=target,
        tags=("latest",),
        policy=PromotionConfig(),
        verified=verified(),
        checks=checks,
        promoter="alice@example",
        now=NOW,
    )
    assert predicate["verifier"]["id"] == promote.PROMOTER_ID
    assert predicate["timeVerified"] == "2026-06-10T00:00:00Z"
    assert predicate["resourceUri"] == f"127.0.0.1:5000/release/static@{DIGEST}"
    assert predicate["verificationResult"] == "PASSED"
    assert predicate["verifiedLevels"] == ["SLSA_BUILD_LEVEL_1"]
    assert predicate["policy"]["digest"]["sha256"] == promote.policy_digest(PromotionConfig())
    assert len(predicate["inputAttestations"]) == 3
    assert predicate["inputAttestations"][0]["uri"].endswith(f"{DIGEST.replace(':', '-')}.att")
    assert predicate["promotion"]["promoter"] == "alice@example"
    assert predicate["promotion"]["source"] == SOURCE


def test_policy_digest_changes_with_the_policy() -> None:
    assert promote.policy_digest(PromotionConfig()) == promote.policy_digest(PromotionConfig())
    assert promote.policy_digest(PromotionConfig()) != promote.policy_digest(
        PromotionConfig(max_age_days=7)
    )


def test_references(tmp_path: Path) -> None:
    with pytest.raises(PromotionError, match="promote by digest") as caught:
        promote.source_reference("127.0.0.1:5000/staging/static:latest")
    assert caught.value.exit_code == 4
    source = promote.source_reference(SOURCE)
    with pytest.raises(PromotionError, match="repository only"):
        promote.destination_reference("127.0.0.1:5000/release/static:v1", source)
    with pytest.raises(PromotionError, match="already in"):
        promote.destination_reference("127.0.0.1:5000/staging/static", source)
    (tmp_path / "basekiln.toml").write_text('[registry]\nrelease = "127.0.0.1:5000/release"\n')
    config = load_config(tmp_path)
    assert promote.default_destination(config, source) == "127.0.0.1:5000/release/static"
    wanted = promote.request(config, SOURCE, None, promoter="bob", now=NOW)
    assert wanted.tags == ("latest", "20260610-cccccccccccc")
    assert str(wanted.target) == f"127.0.0.1:5000/release/static@{DIGEST}"


def test_promoter_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(promote.PROMOTER_ENV, "release-bot")
    assert promote.promoter_identity() == "release-bot"
    monkeypatch.delenv(promote.PROMOTER_ENV)
    assert "@" in promote.promoter_identity()


def test_cli_refuses_a_tag_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "basekiln.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASEKILN_CONFIG", raising=False)
    result = CliRunner().invoke(
        promote_command,
        ["127.0.0.1:5000/staging/static:latest", "--to", "127.0.0.1:5000/release/static",
         "--key", "absent.key"],
    )  # fmt: skip
    assert result.exit_code == 4, result.output
    assert "promote by digest" in result.output
    assert "@sha256:" in result.output


def test_cli_refuses_a_missing_key_with_exit_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "basekiln.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COSIGN_PASSWORD", "x")
    result = CliRunner().invoke(
        promote_command, [SOURCE, "--to", "127.0.0.1:5000/release/static", "--key", "absent.key"]
    )
    assert result.exit_code == 4, result.output
    assert "absent.key does not exist" in result.output
