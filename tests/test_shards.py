"""The token-shard format: round trip, atomic publication, and every refusal the reader promises.

Tokens here are the UTF-8 bytes of real text (a byte-level vocabulary), so no tokenizer is needed;
the tokenizer hash is that of a real file, which is all the format records."""

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tokenizer.shards import HEADER, ShardError, ShardReader, ShardWriter, shard_exists, tokenizer_hash


@pytest.fixture(scope="module")
def documents(shared_data):
    text = (shared_data / "text" / "wagahaiwa_nekodearu.ja.txt").read_text(encoding="utf-8")
    return [np.frombuffer(line.encode("utf-8"), dtype=np.uint8).astype(np.int64)
            for line in text.split("\n")[:400]]


@pytest.fixture(scope="module")
def sha(shared_data):
    return tokenizer_hash(shared_data / "text" / "botchan.en.txt")


def write(prefix: Path, documents, sha, vocab_size=256) -> Path:
    with ShardWriter(prefix, vocab_size, sha) as writer:
        for doc in documents:
            writer.add_document(doc)
    return prefix


@pytest.mark.parametrize("vocab_size,dtype", [(256, "<u2"), (65536, "<u2"), (65537, "<u4")])
def test_round_trip(tmp_path, documents, sha, vocab_size, dtype):
    prefix = write(tmp_path / "train-00000", documents, sha, vocab_size)
    reader = ShardReader(prefix, expected_tokenizer_sha256=sha, expected_vocab_size=vocab_size)
    assert reader.dtype == np.dtype(dtype) and len(reader) == len(documents)
    assert (prefix.with_suffix(".bin").stat().st_size ==
            sum(map(len, documents)) * np.dtype(dtype).itemsize)
    assert all(np.array_equal(reader.document(i), doc) for i, doc in enumerate(documents))
    assert reader.header()["num_tokens"] == sum(map(len, documents))


def test_nothing_is_published_until_close_and_abort_leaves_nothing(tmp_path, documents, sha):
    prefix = tmp_path / "train-00000"
    writer = ShardWriter(prefix, 256, sha)
    writer.add_document(documents[0])
    assert not shard_exists(prefix)
    writer.close()
    assert shard_exists(prefix)
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "train-00001", 256, sha) as writer:
            writer.add_document(documents[0])
            raise RuntimeError("killed")
    assert not shard_exists(tmp_path / "train-00001") and sorted(p.name for p in tmp_path.iterdir()) == [
        "train-00000.bin", "train-00000.idx"]


def test_documents_are_added_in_batches_and_copied_between_shards(tmp_path, documents, sha, shared_data):
    with ShardWriter(tmp_path / "batched", 256, sha) as writer:
        writer.add_documents(np.concatenate(documents[:100]), [len(d) for d in documents[:100]])
        writer.add_document(documents[100])
        with pytest.raises(ValueError, match="lengths sum to"):
            writer.add_documents(documents[101], [len(documents[101]) + 1])
    source = ShardReader(tmp_path / "batched")
    assert len(source) == 101 and all(np.array_equal(source.document(i), documents[i]) for i in range(101))
    with ShardWriter(tmp_path / "copied", 256, sha, durable=False) as writer:
        writer.copy_documents(source, 10, 20)
        writer.add_document(documents[0])
        writer.copy_documents(source, 90, 101)
    copied = ShardReader(tmp_path / "copied", expected_tokenizer_sha256=sha)
    expected = documents[10:20] + documents[:1] + documents[90:101]
    assert len(copied) == len(expected) and all(np.array_equal(copied.document(i), d) for i, d in enumerate(expected))
    other = ShardWriter(tmp_path / "other", 256, tokenizer_hash(shared_data / "text" / "wagahaiwa_nekodearu.ja.txt"))
    with pytest.raises(ShardError, match="another tokenizer"):
        other.copy_documents(source, 0, 1)
    other.abort()


def test_writer_refuses_ids_outside_the_vocabulary(tmp_path, sha):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        with ShardWriter(tmp_path / "x", 100, sha) as writer:
            writer.add_document(np.array([1, 2, 300]))


def test_truncated_bin_is_refused(tmp_path, documents, sha):
    prefix = write(tmp_path / "s", documents, sha)
    bin_path = prefix.with_suffix(".bin")
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    with pytest.raises(ShardError, match=r"s\.bin: .*truncated or corrupt"):
        ShardReader(prefix)


def test_truncated_idx_is_refused(tmp_path, documents, sha):
    prefix = write(tmp_path / "s", documents, sha)
    idx_path = prefix.with_suffix(".idx")
    data = idx_path.read_bytes()
    idx_path.write_bytes(data[:-8])
    with pytest.raises(ShardError, match=r"s\.idx: .*expected .* for 400 documents"):
        ShardReader(prefix)
    idx_path.write_bytes(data[:20])
    with pytest.raises(ShardError, match="truncated header"):
        ShardReader(prefix)


def test_other_tokenizer_and_vocabulary_are_refused(tmp_path, documents, sha, shared_data):
    prefix = write(tmp_path / "s", documents, sha)
    other = tokenizer_hash(shared_data / "text" / "wagahaiwa_nekodearu.ja.txt")
    with pytest.raises(ShardError, match="made with another tokenizer"):
        ShardReader(prefix, expected_tokenizer_sha256=other)
    with pytest.raises(ShardError, match="vocabulary size 256, expected 32000"):
        ShardReader(prefix, expected_vocab_size=32000)


def rewrite_header(prefix: Path, **changes) -> None:
    idx_path = prefix.with_suffix(".idx")
    data = idx_path.read_bytes()
    names = ("magic", "version", "itemsize", "vocab_size", "sha", "num_docs", "num_tokens")
    fields = dict(zip(names, HEADER.unpack(data[:HEADER.size])))
    fields.update(changes)
    idx_path.write_bytes(HEADER.pack(*(fields[n] for n in names)) + data[HEADER.size:])


@pytest.mark.parametrize("changes,message", [
    ({"magic": b"NOTSHARD"}, "not a token shard index"),
    ({"version": 2}, "format version 2"),
    ({"itemsize": 4}, "4-byte tokens do not match a vocabulary of 256"),
    ({"vocab_size": 70000}, "2-byte tokens do not match a vocabulary of 70000"),
    ({"vocab_size": 0}, r"s\.idx: vocabulary size 0"),
])
def test_corrupt_header_is_refused(tmp_path, documents, sha, changes, message):
    prefix = write(tmp_path / "s", documents, sha)
    rewrite_header(prefix, **changes)
    with pytest.raises(ShardError, match=message):
        ShardReader(prefix)


def test_corrupt_offsets_are_refused(tmp_path, documents, sha):
    prefix = write(tmp_path / "s", documents, sha)
    idx_path = prefix.with_suffix(".idx")
    data = bytearray(idx_path.read_bytes())
    struct.pack_into("<Q", data, HEADER.size + 8 * 5, 10**9)  # offset of document 5 beyond the end
    idx_path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="not a monotone cover"):
        ShardReader(prefix)


def test_missing_file_is_named(tmp_path, documents, sha):
    prefix = write(tmp_path / "s", documents, sha)
    prefix.with_suffix(".bin").unlink()
    with pytest.raises(ShardError, match=r"s\.bin: missing"):
        ShardReader(prefix)


def inspect(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokenizer.inspect", str(path), "--json"], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)


def test_ids_outside_the_vocabulary_are_found_by_validate_and_refused_by_inspect(tmp_path, documents, sha):
    prefix = write(tmp_path / "s", documents, sha)
    rewrite_header(prefix, vocab_size=200)  # still 2-byte tokens: the header alone is consistent
    reader = ShardReader(prefix)  # opening checks the header and sizes only: O(1)
    first_bad = int(np.argmax(np.concatenate(documents) >= 200))
    for chunk_tokens in (7, 1 << 24):  # the bad id found wherever the chunks fall
        with pytest.raises(ShardError, match=rf"s\.bin: token {first_bad} has id \d+, outside the vocabulary of 200"):
            reader.validate(chunk_tokens)
    done = inspect(prefix)
    bad_id = int(np.concatenate(documents)[first_bad])
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"error: {prefix}.bin: token {first_bad} has id {bad_id}, "
                                                "outside the vocabulary of 200"]
    ShardReader(write(tmp_path / "good", documents, sha)).validate()  # a good shard passes


def test_inspect_refuses_a_directory_and_a_zero_vocabulary_in_one_line(tmp_path, documents, sha):
    (tmp_path / "x.idx").mkdir()
    done = inspect(tmp_path / "x.idx")
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [f"error: {tmp_path / 'x.idx'}: not a file "
                                                                         "(a shard is NAME.bin and NAME.idx)"]
    prefix = write(tmp_path / "s", documents, sha)
    rewrite_header(prefix, vocab_size=0)
    done = inspect(prefix.with_suffix(".idx"))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert f"{prefix}.idx: vocabulary size 0" in done.stderr
