"""Perplexity of a trained GPT checkpoint over every token of a data split (`megarank-eval`; Table 1's numbers).

    load.py        the TP=1 GPT rebuilt offline from a checkpoint of any layout (TP shards merged, ZeRO-3
                   partitions gathered), no process group
    perplexity.py  the split's token stream cut into next-token windows, the mean NLL over every predicted
                   token; evaluate_checkpoint() ties checkpoint, data and measurement together
    cli.py         the console script, thin
"""

from megarank.evaluation.perplexity import evaluate_checkpoint

__all__ = ["evaluate_checkpoint"]
