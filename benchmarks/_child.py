"""Entry point of a measurement subprocess: `python -m benchmarks._child module:function`.

Reads the keyword arguments as JSON on stdin, calls the function (loopback-only), and
prints `RESULT <json>` on stdout.
"""

from __future__ import annotations

import importlib
import json
import sys

from ._common import loopback_only


def main() -> None:
    loopback_only()
    module_name, _, function_name = sys.argv[1].partition(":")
    kwargs = json.loads(sys.stdin.read() or "{}")
    function = getattr(importlib.import_module(module_name), function_name)
    result = function(**kwargs)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
