"""`python -m megarank.train CONFIG [key=value ...]`: what the launchers start on every rank."""

from megarank.cli import train_process

train_process()
