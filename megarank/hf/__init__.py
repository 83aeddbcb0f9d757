"""Hugging Face Transformers checkpoints in and out of megarank.

    names.py      where each HF family keeps a layer's attention weights (one row per family; megarank-rank's
                  reader, megarank/analysis/readers/hf_layouts.py, reads the same table)
    layouts.py    the name/shape/config map between megarank's GPT and each HF family (one table per family)
    tokenizer.py  the run's SentencePiece model as a `transformers` tokenizer (same ids as megarank's)
    export.py     a megarank checkpoint (any TP/DP/ZeRO layout) -> an HF directory; export_cli.py its CLI
    init_from.py  train.init_from: a megarank tag or an HF directory -> the model section and the weights

No process group and no DeepSpeed engine anywhere here: checkpoints are read offline (megarank/ckpt/shards.py).
"""
