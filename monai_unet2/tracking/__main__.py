"""Command line: ``python -m monai_unet2.tracking export-bundle URI DEST [--tracking_uri URI]``."""

from __future__ import annotations

import argparse
import sys

from .bundle_model import export_bundle


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the sub-command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m monai_unet2.tracking", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export-bundle", help="write a registered model version out as a bundle folder")
    export.add_argument("model_uri", help="e.g. models:/hippocampus_unet25d_segmentation@champion")
    export.add_argument("destination", help="bundle folder to create (must not exist or be empty)")
    export.add_argument("--tracking_uri", default=None, help="tracking/registry URI (default: MLFLOW_TRACKING_URI)")
    args = parser.parse_args(argv)
    try:
        target = export_bundle(args.model_uri, args.destination, args.tracking_uri)
    except Exception as error:
        print(f"export-bundle: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
