"""``whalematch``: tools for curating a whale photo catalogue.

    whalematch verify A.jpg B.jpg                 verdict of one pair and its match picture
    whalematch verify --pairs pairs.csv           a CSV of verdicts (columns image_a,image_b) and a review page
    whalematch search NEW.jpg --catalogue DIR     catalogue images (and whales) ranked for a new photo
    whalematch audit --metadata metadata.csv      labels to check: isolated images, strong cross-whale pairs
    whalematch calibrate --metadata metadata.csv  refit P(same whale) on a labelled catalogue
    whalematch apply-decisions DECISIONS.csv --metadata metadata.csv
                                                  a review page's decisions into a new metadata file

The matching commands share the engine's caches (``--cache-dir``, else $WHALEMATCH_CACHE_DIR,
else ~/.cache/whalematch): features and pair verdicts are computed once per image and
pair for given settings. Each review page records decisions (Same / Different / Not sure)
in the browser and exports them as a CSV for apply-decisions. ``whalematch COMMAND --help``
lists each command's options.
"""

from __future__ import annotations

import logging
import sys

from ..config import setup_logging
from ..errors import ConfigError, WhaleMatchError
from ..io.paths import os_error
from .options import build_parser

log = logging.getLogger("whalematch")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(__doc__)
    except ConfigError as exc:
        print(f"whalematch: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.run(args, argv)
    except WhaleMatchError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:  # a file system refusal the checks did not foresee: named, never a traceback
        log.error("%s", os_error(exc))
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
