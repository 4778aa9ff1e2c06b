"""The commands beside the pipeline, run from the repository root: `python -m imgcls <command> [options]`.

  predict    classify images with an exported model (models/export) or a registered one (models:/NAME/V)
  serve      serve a registered model over HTTP, hardened
  lineage    trace an exported model back to its data, params, code and MLflow run, verifying each link
  reproduce  compare this workspace's results with the committed reference

`python -m imgcls <command> --help` tells each one's options.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "predict": "imgcls.serving.predict",
    "serve": "imgcls.serving.server",
    "lineage": "imgcls.provenance.lineage",
    "reproduce": "imgcls.provenance.reproduce",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
