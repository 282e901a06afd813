"""A test that needs an optional third-party package which is not installed is reported as skipped, with the
reason "<package> is not installed", never as an error; CI (tools/ci_summary.py) fails when such a package is one
the `test` extra installs."""
from __future__ import annotations

import pytest

OPTIONAL_PACKAGES = {"torch", "onnxscript", "dynet", "dynet38", "matplotlib"}


def _missing_optional(exc) -> str | None:
    if isinstance(exc, ImportError):
        name = (getattr(exc, "name", None) or "").split(".")[0]
        if name in OPTIONAL_PACKAGES:
            return name
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or report.outcome != "failed":
        return
    name = _missing_optional(call.excinfo.value)
    if name is not None:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {name} is not installed")


@pytest.fixture(scope="session", autouse=True)
def _private_trust_store(tmp_path_factory):
    """Every test (and every subprocess it starts) uses a fresh trust store, never the user's real one, and no
    trust from the environment: kernels the tests compile are trusted there by cortex-convert, others are not."""
    import os

    saved = {key: os.environ.get(key) for key in ("CORTEX_TRUST_DIR", "CORTEX_TRUSTED_KERNELS")}
    os.environ["CORTEX_TRUST_DIR"] = str(tmp_path_factory.mktemp("trust-store"))
    os.environ.pop("CORTEX_TRUSTED_KERNELS", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
