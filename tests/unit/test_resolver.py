"""The resolver against small hand-built Packages indexes, and Debian version order."""

from __future__ import annotations

import random
import textwrap

import pytest

from basekiln.archive import BinaryPackage, parse_packages
from basekiln.errors import ResolveError
from basekiln.resolver import Request, Selected, Universe, parse_relations, resolve, satisfies


def index(text: str, suite: str = "bookworm") -> list[BinaryPackage]:
    """Parse a hand-written Packages index; Filename/SHA256/Size are filled in."""
    stanzas = []
    for n, stanza in enumerate(textwrap.dedent(text).strip().split("\n\n")):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines())
        extra = f"\nFilename: pool/{fields['Package']}_{n}.deb\nSize: {100 + n}"
        stanzas.append(stanza + extra + f"\nSHA256: {n:064x}")
    return parse_packages("\n\n".join(stanzas).encode(), "debian", suite)


def names(selected: list[Selected]) -> list[str]:
    return [s.package.name for s in selected]


def versions(selected: list[Selected]) -> dict[str, str]:
    return {s.package.name: s.package.version for s in selected}


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.0", "1.0.1"),
        ("1.0~rc1", "1.0"),  # a tilde sorts before everything, even the end
        ("1.0~~", "1.0~"),
        ("1.0", "1.0+b1"),  # binNMUs sort after the original
        ("2.0", "1:0.9"),  # an epoch outranks the upstream version
        ("2.36-9", "2.36-9+deb12u7"),
        ("2.36-9+deb12u7", "2.36-10"),  # revisions compare as numbers, not text
        ("1.9", "1.10"),
        ("1.0a", "1.0b"),
        ("1.0", "1.0a"),
        ("3.0.11-1~deb12u2", "3.0.13-1~deb12u1"),
    ],
)
def test_debian_version_order(lower: str, higher: str) -> None:
    assert satisfies(lower, "<<", higher)
    assert satisfies(higher, ">>", lower)
    assert satisfies(lower, "<=", higher)
    assert not satisfies(lower, ">=", higher)
    assert not satisfies(lower, "=", higher)


@pytest.mark.parametrize(
    ("version", "relation", "wanted", "expected"),
    [
        ("1.0", "=", "1.0", True),
        ("1.0", "=", "1.0-0", True),  # no revision is revision 0
        ("0:1.0", "=", "1.0", True),  # no epoch is epoch 0
        ("1.0", "<=", "1.0", True),
        ("1.0", ">=", "1.0", True),
        ("1.0", "<<", "1.0", False),
        ("1.0", ">>", "1.0", False),
        ("1.0", None, None, True),
    ],
)
def test_satisfies_relations(
    version: str, relation: str | None, wanted: str | None, expected: bool
) -> None:
    assert satisfies(version, relation, wanted) is expected


def test_satisfies_rejects_unknown_relation() -> None:
    with pytest.raises(ValueError, match="unknown version relation"):
        satisfies("1.0", "~=", "1.0")


def test_parse_relations_drops_architecture_qualifiers() -> None:
    groups = parse_relations("libc6:any (>= 2.34), a | b (<< 3)")
    assert [[str(alt) for alt in group] for group in groups] == [
        ["libc6 (>= 2.34)"],
        ["a", "b (<< 3)"],
    ]
    assert parse_relations("  ") == ()


def test_depends_and_pre_depends_are_followed_transitively() -> None:
    universe = Universe(
        index("""
        Package: app
        Version: 1.0
        Pre-Depends: loader
        Depends: libfoo

        Package: loader
        Version: 1.0

        Package: libfoo
        Version: 2.0
        Depends: libbar (>= 1.0)

        Package: libbar
        Version: 1.5

        Package: unrelated
        Version: 1.0
        """)
    )
    selected = resolve(universe, [Request("app")])
    assert names(selected) == ["app", "libbar", "libfoo", "loader"]
    by_name = {s.package.name: s for s in selected}
    assert by_name["app"].depends_on == ("libfoo", "loader")
    assert by_name["libbar"].required_by == ("libfoo",)


def test_recommends_are_not_followed() -> None:
    universe = Universe(
        index("""
        Package: app
        Version: 1.0
        Recommends: docs
        Suggests: more-docs

        Package: docs
        Version: 1.0
        """)
    )
    assert names(resolve(universe, [Request("app")])) == ["app"]


def test_first_available_alternative_wins() -> None:
    universe = Universe(
        index("""
        Package: app
        Version: 1.0
        Depends: missing | second | third

        Package: second
        Version: 1.0

        Package: third
        Version: 1.0
        """)
    )
    assert names(resolve(universe, [Request("app")])) == ["app", "second"]


def test_an_alternative_already_selected_is_kept() -> None:
    universe = Universe(
        index("""
        Package: app
        Version: 1.0
        Depends: first | second

        Package: first
        Version: 1.0

        Package: second
        Version: 1.0
        """)
    )
    selected = resolve(universe, [Request("second"), Request("app")])
    assert names(selected) == ["app", "second"]


@pytest.mark.parametrize(
    ("constraint", "chosen"),
    [
        ("lib (<< 2.0)", "1.0"),
        ("lib (<= 2.0)", "2.0"),
        ("lib (= 2.0)", "2.0"),
        ("lib (>= 2.0)", "3.0"),
        ("lib (>> 2.0)", "3.0"),
        ("lib", "3.0"),
    ],
)
def test_versioned_constraints_pick_the_newest_matching_version(
    constraint: str, chosen: str
) -> None:
    universe = Universe(
        index(f"""
        Package: lib
        Version: 2.0

        Package: app
        Version: 1.0
        Depends: {constraint}

        Package: lib
        Version: 3.0

        Package: lib
        Version: 1.0
        """)
    )
    assert versions(resolve(universe, [Request("app")]))["lib"] == chosen


def test_virtual_package_is_satisfied_by_a_provider() -> None:
    universe = Universe(
        index("""
        Package: base-files
        Version: 12.4
        Pre-Depends: awk

        Package: mawk
        Version: 1.3.4
        Provides: awk
        Priority: required

        Package: gawk
        Version: 5.2.1
        Provides: awk
        Priority: optional
        """)
    )
    # Both provide awk; the required-priority one is taken, as apt would.
    assert names(resolve(universe, [Request("base-files")])) == ["base-files", "mawk"]
    # A provider the recipe asks for itself is preferred over any other.
    selected = resolve(universe, [Request("gawk"), Request("base-files")])
    assert names(selected) == ["base-files", "gawk"]


def test_versioned_provides_satisfy_versioned_dependencies() -> None:
    universe = Universe(
        index("""
        Package: app
        Version: 1.0
        Depends: virt (>= 2)

        Package: old-provider
        Version: 9.0
        Provides: virt (= 1)

        Package: new-provider
        Version: 1.0
        Provides: virt (= 2.5)

        Package: unversioned-provider
        Version: 1.0
        Provides: virt
        """)
    )
    assert names(resolve(universe, [Request("app")])) == ["app", "new-provider"]


def test_unversioned_provides_cannot_satisfy_a_versioned_dependency() -> None:
    universe = Universe(
        index("""
        Package: app
        Version: 1.0
        Depends: virt (>= 2)

        Package: provider
        Version: 3.0
        Provides: virt
        """)
    )
    with pytest.raises(ResolveError, match="virt is only provided virtually"):
        resolve(universe, [Request("app")])


def test_dependencies_false_takes_the_package_alone() -> None:
    universe = Universe(
        index("""
        Package: tzdata
        Version: 2024a
        Depends: debconf

        Package: debconf
        Version: 1.5
        """)
    )
    (selected,) = resolve(universe, [Request("tzdata", dependencies=False)])
    assert selected.package.name == "tzdata"
    assert selected.dependencies_followed is False
    assert selected.depends_on == ()


def test_parent_packages_satisfy_dependencies() -> None:
    universe = Universe(
        index("""
        Package: libssl3
        Version: 3.0
        Depends: libc6 (>= 2.34), awk

        Package: libc6
        Version: 2.36

        Package: mawk
        Version: 1.3
        Provides: awk
        """)
    )
    installed = {
        "libc6": universe.candidates("libc6")[0],
        "mawk": universe.candidates("mawk")[0],
    }
    selected = resolve(universe, [Request("libssl3"), Request("libc6")], installed)
    assert names(selected) == ["libssl3"]
    assert selected[0].depends_on == ("libc6", "mawk")


def test_parent_package_too_old_is_not_replaced() -> None:
    universe = Universe(
        index("""
        Package: app
        Version: 1.0
        Depends: libc6 (>= 2.40)

        Package: libc6
        Version: 2.36

        Package: libc6
        Version: 2.41
        """)
    )
    parent_libc = universe.find("libc6", "2.36")
    assert parent_libc is not None
    # The image cannot hold two libc6; the parent's wins and the conflict is reported.
    with pytest.raises(ResolveError, match=r"libc6 \(>= 2\.40\)"):
        resolve(universe, [Request("app")], {"libc6": parent_libc})


def test_resolution_is_deterministic() -> None:
    packages = index("""
        Package: app
        Version: 1.0
        Depends: virt, lib (>= 1), other | lib

        Package: p-two
        Version: 1.0
        Provides: virt

        Package: p-one
        Version: 1.0
        Provides: virt

        Package: lib
        Version: 1.0
        Depends: zlib

        Package: lib
        Version: 0.9

        Package: zlib
        Version: 1.0
        """)
    expected = resolve(Universe(packages), [Request("app")])
    assert names(expected) == ["app", "lib", "p-one", "zlib"]
    rng = random.Random(1234)
    for _ in range(20):
        shuffled = list(packages)
        rng.shuffle(shuffled)
        assert resolve(Universe(shuffled), [Request("app")]) == expected


def test_unsatisfiable_dependency_names_the_chain() -> None:
    universe = Universe(
        index("""
        Package: app
        Version: 1.0
        Depends: middle

        Package: middle
        Version: 2.0
        Depends: libc6 (>= 3.0) | musl

        Package: libc6
        Version: 2.36
        """)
    )
    with pytest.raises(ResolveError) as caught:
        resolve(universe, [Request("app")], origin="recipes/app.yaml")
    message = caught.value.message
    assert "cannot satisfy middle 2.0's dependency 'libc6 (>= 3.0) | musl'" in message
    assert "libc6 offers only 2.36" in message
    assert "no package musl exists" in message
    assert "Chain: recipes/app.yaml → app → middle (via middle)" in message


def test_unknown_package_suggests_close_names() -> None:
    universe = Universe(
        index("""
        Package: libssl3
        Version: 3.0

        Package: libssl-dev
        Version: 3.0

        Package: zlib1g
        Version: 1.2
        """)
    )
    with pytest.raises(ResolveError) as caught:
        resolve(universe, [Request("libsl3")], origin="recipes/x.yaml")
    message = caught.value.message
    assert "recipes/x.yaml: packages: 'libsl3' is not in any of the recipe's suites" in message
    assert "Did you mean: " in message
    assert "libssl3" in message.split("Did you mean:")[1]
    assert "zlib1g" not in message


def test_asking_for_a_virtual_package_names_its_providers() -> None:
    universe = Universe(
        index("""
        Package: mawk
        Version: 1.3
        Provides: awk

        Package: gawk
        Version: 5.2
        Provides: awk
        """)
    )
    with pytest.raises(ResolveError, match="'awk' is a virtual package provided by gawk, mawk"):
        resolve(universe, [Request("awk")])


def test_newest_version_across_suites_wins() -> None:
    packages = index(
        """
        Package: tzdata
        Version: 2024a-0+deb12u1
        """
    ) + index(
        """
        Package: tzdata
        Version: 2024b-0+deb12u1
        """,
        suite="bookworm-updates",
    )
    (selected,) = resolve(Universe(packages), [Request("tzdata")])
    assert (selected.package.version, selected.package.suite) == (
        "2024b-0+deb12u1",
        "bookworm-updates",
    )


def test_parse_packages_reads_the_fields_resolution_needs() -> None:
    text = textwrap.dedent("""\
        Package: libssl3
        Source: openssl (3.0.11-1~deb12u2)
        Version: 3.0.11-1~deb12u2+b1
        Architecture: amd64
        Depends: libc6 (>= 2.34)
        Description: Secure Sockets Layer toolkit
         This package is part of the OpenSSL project's implementation.
         Version: 99 (a continuation line is not a field)
        Filename: pool/main/o/openssl/libssl3_3.0.11-1~deb12u2+b1_amd64.deb
        Size: 2026
        SHA256: 5e2f4d1bcbd1ed4b0a3cfcb07fc1fbdcb2e4b14d2d1cdd1eb7e0e6de7d0c7a0b

        Package: netbase
        Version: 6.4
        Architecture: all
        Filename: pool/main/n/netbase/netbase_6.4_all.deb
        Size: 12
        SHA256: 1111111111111111111111111111111111111111111111111111111111111111
        """)
    ssl, netbase = parse_packages(text.encode(), "debian", "bookworm")
    assert (ssl.name, ssl.version, ssl.size) == ("libssl3", "3.0.11-1~deb12u2+b1", 2026)
    assert (ssl.source, ssl.source_version) == ("openssl", "3.0.11-1~deb12u2")
    assert ssl.depends == "libc6 (>= 2.34)"
    assert (netbase.source, netbase.source_version) == ("netbase", "6.4")
    assert (netbase.archive, netbase.suite, netbase.priority) == ("debian", "bookworm", "optional")
