"""SentencePiece BPE tokenizer for source code and prose: training and a thin encode/decode wrapper.

The training options are chosen so that every string round-trips exactly (decode(encode(s)) == s), which
code needs: byte_fallback covers characters never seen in training, identity normalization and
remove_extra_whitespaces=False keep tabs and runs of spaces, add_dummy_prefix=False stops a space being
invented at the start of each document, and whitespace-only pieces let indentation become one token.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from megarank.errors import MegarankError
from megarank.files import atomic_write_bytes

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
# SentencePiece silently skips training sentences longer than max_sentence_length bytes, so documents are
# cut at line boundaries into chunks that fit.
_CHUNK_BYTES = 4096
_TRAIN_THREADS = 2  # fixed, so a model trained on a laptop and on a cluster node is the same model
_ENCODE_THREADS = min(8, os.cpu_count() or 1)


def train_tokenizer(
    texts: Iterable[str],
    model_prefix: str | Path,
    vocab_size: int,
    *,
    model_type: str = "bpe",
    max_chars: int = 20_000_000,
) -> Path:
    """Train a SentencePiece model on documents and write `{model_prefix}.model`; returns that path.

    Only the first `max_chars` characters are used: BPE training time grows with the input, and a few MB
    already fix the merges of a 4-32k vocabulary. The model is written to a temporary name and renamed, so
    a crash never leaves a half-written model where a later run would load it.
    """
    model_path = Path(f"{model_prefix}.model")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(0)  # unigram seeding samples; fix it so two trainings give one model
    model_bytes = _SerializedModel()
    chunks = _ChunkStream(texts, max_chars)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=chunks,
            model_writer=model_bytes,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            max_sentence_length=2 * _CHUNK_BYTES,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=-1,
            num_threads=_TRAIN_THREADS,
            minloglevel=2,
        )
    except RuntimeError as err:  # e.g. "Vocabulary size too high (5000). Please set it to a value <= 812."
        if chunks.n_chars == 0:
            raise MegarankError(
                f"no text to train tokenizer {model_path} on; check the input files and text key"
            ) from err
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MegarankError(
            f"sentencepiece could not train a {model_type} vocab of {vocab_size} for {model_path} "
            f"({chunks.n_chars} chars of input): {detail}; change the vocab size or add text"
        ) from err
    atomic_write_bytes(model_path, model_bytes.data)
    return model_path


class _SerializedModel:
    """The `model_writer` SentencePiece calls with the serialized model, instead of writing files itself."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class _ChunkStream(Iterator[str]):
    """Documents cut at line ends into pieces of at most _CHUNK_BYTES, stopping after max_chars characters.

    Newlines stay inside the chunks, so the vocabulary learns pieces such as ':\\n' that cross lines.
    """

    def __init__(self, texts: Iterable[str], max_chars: int) -> None:
        self.n_chars = 0
        self._chunks = self._generate(texts, max_chars)

    def __next__(self) -> str:
        return next(self._chunks)

    def _generate(self, texts: Iterable[str], max_chars: int) -> Iterator[str]:
        for text in texts:
            for chunk in _split_lines_to_chunks(text):
                yield chunk
                self.n_chars += len(chunk)
                if self.n_chars >= max_chars:
                    return


def _split_lines_to_chunks(text: str) -> Iterator[str]:
    chunk: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if chunk and size + n > _CHUNK_BYTES:
            yield "".join(chunk)
            chunk, size = [], 0
        if n > _CHUNK_BYTES:  # a single huge line (minified data): cut it into 1024-character pieces,
            for i in range(0, len(line), _CHUNK_BYTES // 4):  # at most 4 bytes each in UTF-8
                yield line[i : i + _CHUNK_BYTES // 4]
            continue
        chunk.append(line)
        size += n
    if chunk:
        yield "".join(chunk)


def model_sha256(model_path: str | Path) -> str:
    """sha256 of a SentencePiece model file: what shard indexes record as tokenizer_sha256."""
    return hashlib.sha256(Path(model_path).read_bytes()).hexdigest()


class Tokenizer:
    """A loaded SentencePiece model. Encoding adds no BOS/EOS: the shard writer puts EOS between documents."""

    def __init__(self, model_path: str | Path) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise MegarankError(
                f"tokenizer model {self.model_path} not found; train one with tools/train_tokenizer.py "
                f"or point the config at an existing .model file"
            )
        self.sha256 = model_sha256(self.model_path)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.load(str(self.model_path))
        except (OSError, RuntimeError) as err:
            raise MegarankError(
                f"{self.model_path} is not a sentencepiece model ({err}); retrain it with tools/train_tokenizer.py"
            ) from err
        self.vocab_size: int = self._sp.get_piece_size()
        self.eos_id: int = self._sp.eos_id()
        self.bos_id: int = self._sp.bos_id()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str], num_threads: int = _ENCODE_THREADS) -> list[list[int]]:
        """Encode many documents at once; SentencePiece spreads them over num_threads C++ threads (1 in a
        preprocessing worker: the workers are the parallelism there)."""
        return self._sp.encode(texts, out_type=int, num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    # datasets.map(num_proc>1) pickles the tokenizer into worker processes and fingerprints it for its
    # cache; the path plus the model's hash does both without pickling the C++ processor.
    def __getstate__(self) -> dict:
        return {"model_path": str(self.model_path), "sha256": self.sha256}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_path"])
