"""Run `advml` command lines, each in a forked child under an address-space limit: `python hostile.py CASES OUT`.

CASES is a JSON list of {"id", "args"}; OUT gets, per case, its exit code, stderr and wall seconds. advml is
imported once, before the limit's children fork, so each case pays for its own work only (not torch's import)."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback

LIMIT = 4 * 2**30


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))  # before any import: the whole process lives under it
    import advml.cli  # noqa: F401  (the commands and what they import, once)
    import advml.experiments  # noqa: F401

    cases, out = json.loads(open(sys.argv[1]).read()), sys.argv[2]
    results = []
    for case in cases:
        err = f"{out}.{case['id']}.stderr"
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: one command line, its stderr to a file
            fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            sys.argv = ["advml", *case["args"]]
            code = 1
            try:
                advml.cli.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            except BaseException:  # a traceback: what the test is there to catch
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        seconds = time.perf_counter() - start
        results.append({"id": case["id"], "code": os.waitstatus_to_exitcode(status), "seconds": seconds,
                        "stderr": open(err).read()})
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
