"""Rank analysis of a checkpoint's attention heads: the same as the `megarank-rank` console script.

    python tools/rank_analysis.py runs/default --out runs/default/rank
    python tools/rank_analysis.py compare runs/wd0 runs/wd0.1 --out runs/rank_vs_wd
"""

from __future__ import annotations

import sys

from megarank.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
