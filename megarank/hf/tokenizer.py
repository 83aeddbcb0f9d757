"""A run's SentencePiece tokenizer as a `transformers` tokenizer that gives the ids megarank's gives.

Which model: the run's (its checkpoint's marker records the sha256 of the tokenizer its shards were made with),
found where the run's config says: data.tokenizer, beside the shards under data.path (or where their index
records it), or in the embedded corpus' cache; or passed explicitly.

How: megarank's tokenizer is a SentencePiece BPE with byte fallback, no normalization and no dummy prefix
(megarank/data/tokenizer.py), adding neither BOS nor EOS. Its vocabulary and merges become a `tokenizers` BPE
through transformers' LlamaTokenizer (Metaspace '▁' for spaces, never prepended; byte fallback), with
add_bos_token=false, and split_special_tokens=true so that a literal '<s>' in text is text, as SentencePiece
reads it. The directory also keeps the .model itself, for tools that load SentencePiece directly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from megarank.ckpt.marker import Marker
from megarank.data.tokenizer import BOS_ID, EOS_ID, UNK_ID, model_sha256
from megarank.errors import MegarankError


def run_tokenizer(marker: Marker) -> Path:
    """The .model the checkpoint's run was trained with; one line naming where it was looked for if absent."""
    data = marker.section("data")
    expected = marker.data.get("tokenizer_sha256")
    candidates = []
    if data.get("tokenizer"):
        candidates.append(Path(data["tokenizer"]).expanduser())
    if data.get("path"):
        root = Path(data["path"]).expanduser()
        candidates.append(root / "tokenizer.model")
        try:
            recorded = json.loads((root / "train" / "index.json").read_text()).get("tokenizer")
        except (OSError, ValueError):
            recorded = None
        if recorded:
            candidates.append(Path(recorded))
    else:
        from megarank.data.stdlib_corpus import stdlib_dataset_location

        try:
            candidates.append(stdlib_dataset_location(Path(data.get("cache_dir", "~/.cache/megarank")).expanduser(),
                                                      int(data.get("tokenizer_vocab", 4096))).tokenizer_path)
        except MegarankError:  # no stdlib sources on this machine
            pass
    for path in candidates:
        if path.is_file() and (expected is None or model_sha256(path) == expected):
            return path
    looked = ", ".join(str(p) for p in candidates) or "nowhere (the run's config names no data)"
    raise MegarankError(f"the run's tokenizer{f' (sha256 {expected[:12]})' if expected else ''} is not at {looked}; "
                        "pass --tokenizer PATH to its .model")


def hf_tokenizer(model_path: Path):
    """The `transformers` tokenizer of SentencePiece model `model_path` (same ids, no BOS/EOS added)."""
    from tokenizers.models import BPE
    from transformers import LlamaTokenizer
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    if (sp.unk_id(), sp.bos_id(), sp.eos_id()) != (UNK_ID, BOS_ID, EOS_ID):
        raise MegarankError(f"'{model_path}' has unk/bos/eos ids {(sp.unk_id(), sp.bos_id(), sp.eos_id())}, not "
                            f"megarank's {(UNK_ID, BOS_ID, EOS_ID)}: not made by megarank's tokenizer training")
    extracted = SentencePieceExtractor(str(model_path)).extract(BPE)
    return LlamaTokenizer(vocab=extracted["vocab"], merges=extracted["merges"], unk_token=sp.id_to_piece(UNK_ID),
                          bos_token=sp.id_to_piece(BOS_ID), eos_token=sp.id_to_piece(EOS_ID), add_bos_token=False,
                          add_eos_token=False, add_prefix_space=False, legacy=False, split_special_tokens=True)


def write_tokenizer(model_path: Path, out: Path) -> None:
    """The HF tokenizer files of `model_path` into directory `out`, with the .model beside them."""
    hf_tokenizer(model_path).save_pretrained(str(out))
    shutil.copyfile(model_path, out / "tokenizer.model")
