"""megarank's checkpoint format, owned in one place and readable with no process group.

    tags.py       the directory layout: tag names, the completion marker, `latest`, which tags are complete
    manifest.py   every file's size and sha256 in the marker, and checking a tag against them
    retention.py  which old checkpoints go after a save (checkpoint.keep_last, checkpoint.keep_every)
    cli.py        `megarank-ckpt verify PATH`

Training (megarank/train/checkpoint.py) writes through these modules; the offline tools (megarank-rank,
megarank-eval, megarank-sweep) read through them. Nothing here imports megarank.train, DeepSpeed or
torch.distributed.
"""
