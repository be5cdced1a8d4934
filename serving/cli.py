"""`pipewright serve` / `python -m serving`: TF Serving's command line, same flags."""

from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from serving.config import parse_args
    from serving.errors import ServingError

    argv = list(sys.argv[1:] if argv is None else argv)
    options = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from serving.server import run
        return run(options)
    except ServingError as e:
        print(f"pipewright serve: {e.status_string()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
