"""`python -m megarank.experiments NAME ...`, the same as megarank-exp."""

import sys

from megarank.experiments.cli import main

sys.exit(main())
