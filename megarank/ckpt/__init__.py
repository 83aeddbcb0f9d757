"""megarank's checkpoint format, owned in one place and readable with no process group.

    marker.py     the completion marker (Marker): the one reader of megarank_complete.json
    tags.py       the directory layout: tag names, `latest`, which tags are complete
    resolve.py    which tag(s) a user's path designates (a run dir, a checkpoint dir, a tag)
    manifest.py   every file's size and sha256 in the marker, and checking a tag against them
    space.py      the free space a save needs, and a full disk told as one line
    retention.py  which old checkpoints go after a save (checkpoint.keep_last, checkpoint.keep_every)
    shards.py     the saved tensors of each TP rank, read from DeepSpeed's files (torch, lazily DeepSpeed's
                  zero_to_fp32)
    cli.py        `megarank-ckpt verify PATH`

Training (megarank/train/checkpoint.py) writes through these modules; the offline tools (megarank-rank,
megarank-eval, megarank-sweep) read through them. Nothing here imports megarank.train, megarank.parallel or
torch.distributed, and all but shards.py import neither torch nor DeepSpeed.
"""
