"""`kubectl virt VERB NAME`: kvtool's VM verbs as a kubectl plugin (installed as `kubectl-virt`).

kubectl finds `kubectl-virt` on PATH and passes the remaining arguments; the
kubeconfig comes from $KUBECONFIG or kvtool's usual resolution.
"""

from __future__ import annotations

import sys

from kvtool.cli import main as kvtool_main

VERBS = ("start", "stop", "restart", "pause", "unpause", "migrate", "migrate-cancel", "console", "ssh", "status")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in VERBS:
        print("usage: kubectl virt {" + ",".join(VERBS) + "} NAME [-n NAMESPACE]\n"
              "kvtool's VM verbs for kubectl; see `kvtool --help`.", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    return kvtool_main.main(args)


if __name__ == "__main__":
    sys.exit(main())
