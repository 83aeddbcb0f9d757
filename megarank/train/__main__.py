"""`python -m megarank.train CONFIG [key=value ...]`: what the launchers start on every rank."""

import sys

from megarank.cli import train_main

sys.exit(train_main())
