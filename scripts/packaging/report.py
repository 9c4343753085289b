"""A tiny pass/fail reporter shared by the packaging checks: each check prints one line,
"ok:" or "FAIL:" with what exactly is wrong, and the run ends with "N passed, M failed"."""

import sys


class Report:
    def __init__(self, prefix):
        self.prefix = prefix
        self.passed = 0
        self.failed = 0

    def ok(self, message):
        self.passed += 1
        print(f"  ok: {message}")

    def fail(self, message):
        self.failed += 1
        print(f"  FAIL: {message}")

    def check(self, condition, message, detail=""):
        if condition:
            self.ok(message)
        else:
            self.fail(f"{message}{': ' + detail if detail else ''}")
        return condition

    def note(self, message):
        print(f"  note: {message}")

    def section(self, title):
        print(f"[{self.prefix}] {title}")

    def finish(self):
        print(f"{self.prefix}: {self.passed} passed, {self.failed} failed")
        sys.stdout.flush()
        return 1 if self.failed else 0
