"""``python -m monai_unet2 <command>``: the package's command line.

Commands:
    plan    fingerprint a dataset and write a complete bundle for it (``python -m monai_unet2 plan --help``)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

COMMANDS = {"plan": "fingerprint a dataset and write a complete bundle for it"}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {name:8} {summary}" for name, summary in COMMANDS.items())
        print(f"usage: python -m monai_unet2 <command> [options]\n\ncommands:\n{listing}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "plan":
        from monai_unet2.planning.cli import main as plan

        return plan(argv[1:])
    return 2


if __name__ == "__main__":
    sys.exit(main())
