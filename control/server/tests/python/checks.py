"""What the Python client checks share: named checks that record failures instead of
stopping (so one run shows every problem), the expected-error helper, and the
summary that sets the exit status."""

import sys
import traceback

from kubernetes.client.rest import ApiException

failures = []


def check(name):
    """Runs the decorated function now as one named check, recording a failure
    instead of stopping, so one run shows every problem."""

    def run(fn):
        try:
            fn()
            print(f"ok - {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - any exception is a failed check
            failures.append(name)
            print(f"FAIL - {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stdout)
        return fn

    return run


def expect_status(code, fn, *args, **kwargs):
    """Calls fn and asserts it raises ApiException with this HTTP status."""
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        assert e.status == code, f"expected {code}, got {e.status}: {e.body}"
        return e
    raise AssertionError(f"expected ApiException {code}, but the call succeeded")


def summary():
    """Prints the outcome; the exit status for the script."""
    print(f"{len(failures)} failed" if failures else "all checks passed", flush=True)
    return 1 if failures else 0
