"""How an error on one rank stops the whole job promptly, with its message, its rank and its host.

Set-up (config, data and checkpoint checks, before the first training collective): every rank runs the checks
inside `setup_checked_on_every_rank()`, and on leaving it all ranks compare notes in one all_gather. If any
rank failed, every rank raises SetupFailed, rank 0 prints each failing rank's message, e.g.
`error: [rank 1 on host-b] data.path '/x' has no train/index.json ...`, and all exit 2 — no rank goes on into
a collective that a failed rank will never join. An error every rank raised alike (a bad config value) is
printed once, as in a single process.

Training: a rank cannot ask the others (they wait inside some collective), so `fail` prints the error with
its rank and host and ends the process at once, with os._exit: a normal interpreter shutdown can block in NCCL
or DataLoader teardown while peers wait. The launcher stops the rest: DeepSpeed's launcher and torchrun
terminate the node's other processes when one exits non-zero; ranks on other nodes see their next collective
fail (gloo: connection closed; NCCL: remote error), or at the latest after parallel.timeout_minutes.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from contextlib import contextmanager

from megarank.errors import CollectiveError, MegarankError


class SetupFailed(CollectiveError):
    """Raised on every rank when the set-up checks failed on any; str() holds one line per distinct failure."""

    def __init__(self, message: str, *, user_error: bool):
        super().__init__(message)
        self.exit_code = 2 if user_error else 1


def where() -> str:
    """'rank R on HOST' for this process (the launchers set RANK; a plain `python` run is rank 0)."""
    return f"rank {os.environ.get('RANK', '0')} on {socket.gethostname()}"


@contextmanager
def setup_checked_on_every_rank():
    """Run set-up checks inside; on leaving, every rank learns whether any rank failed (one all_gather), and
    all raise SetupFailed together if one did. A collective inside the block is safe only where every rank
    reaches it, i.e. after checks that depend on the config alone (the config is the same on every rank)."""
    try:
        yield
    except Exception as err:
        agree_on_setup(err)  # raises
    agree_on_setup(None)


def agree_on_setup(error: Exception | None) -> None:
    """Collective over all ranks: raise SetupFailed on every rank if `error` is set on any; in a world of one,
    re-raise `error` itself (its message, or its traceback for a bug, is the whole story)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        if error is not None:
            raise error
        return
    host = socket.gethostname()
    if error is not None and not isinstance(error, MegarankError):
        traceback.print_exception(error)  # a bug: keep its traceback on the rank where it happened
    notes: list = [None] * dist.get_world_size()  # every rank's (host, message or None, a user error?)
    dist.all_gather_object(notes, (host, None if error is None else _describe(error),
                                   isinstance(error, MegarankError)))
    failed = [(rank, h, message, user) for rank, (h, message, user) in enumerate(notes) if message is not None]
    if not failed:
        return
    user_error = all(user for *_, user in failed)
    by_message: dict[str, list[tuple[int, str]]] = {}  # message -> (rank, host) of the ranks that raised it
    for rank, h, message, _ in failed:
        by_message.setdefault(message, []).append((rank, h))
    if len(failed) == len(notes) and len(by_message) == 1:  # alike on every rank: the config, not one node
        raise SetupFailed(failed[0][2], user_error=user_error) from error
    # a failing rank on another host than rank 0 may write to a log of its own (one per node): name it there too
    if error is not None and host != notes[0][0]:
        print(f"error: [{where()}] {_describe(error)}", file=sys.stderr, flush=True)
    lines = [f"[{_ranks_text(ranks)}] {message}" for message, ranks in by_message.items()]
    raise SetupFailed("\n".join(lines), user_error=user_error) from error


def fail(err: Exception) -> int:
    """Report `err` as this rank should and return the exit status (2: the user's input, 1: anything else).

    In a job of several processes with the process group up, leave at once instead of returning."""
    code = getattr(err, "exit_code", 2 if isinstance(err, MegarankError) else 1)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        if not isinstance(err, MegarankError):
            raise err  # a bug in a single process: Python's own traceback and exit status 1
        _print_error(str(err))
        return code
    if isinstance(err, CollectiveError):  # every rank raised it at the same point: rank 0 speaks for all
        if os.environ.get("RANK", "0") == "0":
            _print_error(str(err))
    elif not _process_group_up():
        # a config error, before the process group: there is nobody to ask whether the other ranks failed too,
        # but the config comes from the node's own files, so the node's first process reports it
        if os.environ.get("LOCAL_RANK", "0") == "0":
            _print_error(f"[{where()}] {_describe(err)}")
    else:  # other ranks may be waiting for this one inside a collective
        if not isinstance(err, MegarankError) and not _lost_a_peer(err):
            traceback.print_exception(err)
        _print_error(f"[{where()}] {_describe(err)}")
    if _process_group_up():
        # no interpreter shutdown: with the process group still up it can block (NCCL, DataLoader workers) or
        # abort in gloo's teardown, while the launcher waits for this exit status to stop the other ranks
        sys.stdout.flush()
        os._exit(code)
    return code


def _describe(err: BaseException) -> str:
    if isinstance(err, MegarankError):
        return str(err)
    if _lost_a_peer(err):
        return f"another rank stopped or stopped answering; its own error says why ({type(err).__name__}: {err})"
    return f"unexpected {type(err).__name__}: {err}"


def _lost_a_peer(err: BaseException) -> bool:
    """A collective (or the start-up rendezvous) failed because another rank went away or timed out; that rank
    reported the cause."""
    dist = sys.modules.get("torch.distributed")
    # gloo raises a plain RuntimeError naming the broken connection
    return ((dist is not None and isinstance(err, dist.DistError))
            or any(sign in str(err) for sign in ("Connection closed by peer", "Connection reset by peer")))


def _process_group_up() -> bool:
    dist = sys.modules.get("torch.distributed")  # not even imported before the config loads
    return dist is not None and dist.is_available() and dist.is_initialized()


def _ranks_text(ranks_hosts: list[tuple[int, str]]) -> str:
    """[(1, 'a'), (2, 'a'), (3, 'a'), (9, 'b')] -> 'ranks 1-3 on a, rank 9 on b'."""
    by_host: dict[str, list[list[int]]] = {}  # host -> runs of consecutive ranks, [first, last]
    for rank, host in sorted(ranks_hosts):
        runs = by_host.setdefault(host, [])
        if runs and rank == runs[-1][1] + 1:
            runs[-1][1] = rank
        else:
            runs.append([rank, rank])
    parts = []
    for host, runs in by_host.items():
        several = len(runs) > 1 or runs[0][0] != runs[0][1]
        ranks = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
        parts.append(f"{'ranks' if several else 'rank'} {ranks} on {host}")
    return ", ".join(parts)


def _print_error(message: str) -> None:
    for line in message.splitlines():
        print(f"error: {line}", file=sys.stderr, flush=True)
