"""Summarizes a pytest JUnit report for CI: skipped tests counted by reason, and a failure when any test errored
or was skipped because a package that the `test` extra installs is missing.

    python tools/ci_summary.py REPORT.xml pyproject.toml
"""
from __future__ import annotations

import collections
import re
import sys
import tomllib
import xml.etree.ElementTree as ET

NOT_INSTALLED = re.compile(r"(?:no module named '?([\w.]+)'?|([\w.-]+) (?:is|are) not installed|"
                           r"could not import '([\w.]+)')", re.IGNORECASE)


def test_extra_packages(pyproject: str) -> set:
    with open(pyproject, "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["test"]
    names = {re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower() for req in extra}
    return names | {n.replace("-", "_") for n in names}


def summarize(report: str, pyproject: str) -> int:
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    errors = sum(int(s.get("errors", 0)) for s in suites)
    failures = sum(int(s.get("failures", 0)) for s in suites)
    reasons = collections.Counter()
    for case in root.iter("testcase"):
        skipped = case.find("skipped")
        if skipped is not None:
            reason = (skipped.get("message") or skipped.text or "no reason").strip()
            reasons[re.sub(r"^Skipped: ", "", reason)] += 1
    print(f"ci: {failures} failed, {errors} errors, {sum(reasons.values())} skipped")
    for reason, count in reasons.most_common():
        print(f"ci:   {count:4d} skipped: {reason}")
    required = test_extra_packages(pyproject)
    bad = 0
    for reason in reasons:
        for match in NOT_INSTALLED.finditer(reason):
            name = next(g for g in match.groups() if g).split(".")[0].lower()
            if name in required:
                print(f"ci: FAIL: skipped for '{name}', which the test extra installs: {reason}")
                bad += 1
    if errors:
        print(f"ci: FAIL: {errors} tests errored")
    return 1 if errors or failures or bad else 0


if __name__ == "__main__":
    sys.exit(summarize(sys.argv[1], sys.argv[2]))
