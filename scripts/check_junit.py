#!/usr/bin/env python3
"""CI guard on a pytest JUnit XML report: fail unless tests ran and none was skipped.

`make integration` runs it when CI is set, so that a missing Envoy, a missing module or a
test that skips itself can never pass CI quietly.
"""

import sys
import xml.etree.ElementTree as ET


def main(path: str) -> int:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests = sum(int(s.get("tests", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    if tests == 0:
        print(f"{path}: no integration test ran", file=sys.stderr)
        return 1
    if skipped:
        names = [
            f"{case.get('classname')}::{case.get('name')}: {skip.get('message', '')}"
            for case in root.iter("testcase")
            for skip in case.findall("skipped")
        ]
        print(f"{path}: {skipped} test(s) skipped, which CI does not allow:", file=sys.stderr)
        for n in names:
            print(f"  {n}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "out/pytest-integration.xml"))
