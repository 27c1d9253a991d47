"""Prefect flows over the basekiln library: rebuild one image, nightly, promote.

Each task wraps one plain function from `basekiln.nightly` or `basekiln.promote`,
and each flow only sequences tasks; the logic is unit-tested without Prefect.
`prefect.yaml` at the repository root deploys them.
"""
