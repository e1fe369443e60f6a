"""Tokenizer training, the shard job and the inspector, on real texts from ../shared/data."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from jobs import tokenize
from tokenizer import train
from tokenizer.shards import ShardReader, tokenizer_hash

REPO_ROOT = Path(__file__).resolve().parent.parent
VOCAB = 4000  # small enough to train in seconds; CJK needs coverage below the default to fit it
COVERAGE = 0.99


def real_documents(shared_data: Path) -> dict[str, list[str]]:
    """Documents by language: Botchan and Wagahai wa Neko de Aru cut into runs of paragraphs,
    and the CMRC 2018 Chinese Wikipedia passages."""
    docs = {}
    for lang, name, per_doc in (("en", "botchan.en.txt", 12), ("ja", "wagahaiwa_nekodearu.ja.txt", 40)):
        lines = (shared_data / "text" / name).read_text(encoding="utf-8").split("\n")
        docs[lang] = ["\n".join(lines[i:i + per_doc]) for i in range(0, len(lines), per_doc)]
    zh = []
    for name in ("cmrc2018_trial.json", "cmrc2018_dev.json"):
        for article in json.loads((shared_data / "wikipedia" / "zh" / name).read_text(encoding="utf-8"))["data"]:
            zh.extend(p["context"] for p in article["paragraphs"])
    docs["zh"] = zh
    return {lang: [d for d in texts if d.strip()] for lang, texts in docs.items()}


def write_curated(shared_data: Path, root: Path) -> dict[str, list[str]]:
    """Curated-style Parquet (zstd) in Hive partitions language=xx/bucket=yy, two files a partition."""
    docs = real_documents(shared_data)
    for lang, texts in docs.items():
        for b, bucket in enumerate(("head", "middle")):
            part = texts[b::2]
            directory = root / f"language={lang}" / f"bucket={bucket}"
            directory.mkdir(parents=True, exist_ok=True)
            for f in range(2):
                pq.write_table(pa.table({"raw_content": part[f::2]}), directory / f"part-{f}.parquet", compression="zstd")
    return docs


def proto_fields(data: bytes) -> dict[int, list]:
    """The top-level fields of a protobuf message (varints as ints, length-delimited as bytes):
    enough to read a SentencePiece ModelProto without the protobuf package."""
    fields, i = {}, 0

    def varint():
        nonlocal i
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(data):
        tag = varint()
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value = varint()
        elif wire == 2:
            size = varint()
            value, i = data[i:i + size], i + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, i = data[i:i + width], i + width
        else:
            raise ValueError(f"unexpected wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


@pytest.fixture(scope="module")
def curated(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("curated")
    return root, write_curated(shared_data, root)


@pytest.fixture(scope="module")
def model_dir(curated, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    train.train(curated[0], out, vocab_size=VOCAB, seed=3, character_coverage=COVERAGE, threads=2)
    return out


def test_model_is_llama_style_bpe(model_dir):
    model = model_dir / "tokenizer.model"
    spec = proto_fields(proto_fields(model.read_bytes())[2][0])  # ModelProto.trainer_spec
    assert spec[3] == [2]  # TrainerSpec.model_type: BPE
    assert spec[25] == [1] and spec[35] == [1]  # split_digits, byte_fallback
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.get_piece_size() == VOCAB
    assert [sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()] == [0, 1, 2, 3]
    assert [p for p in sp.encode("2019", out_type=str) if p != "▁"] == ["2", "0", "1", "9"]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert manifest["model_type"] == "bpe" and manifest["vocab_size"] == VOCAB
    assert {g.split("/")[0] for g in manifest["sample"]["groups"]} == {"en", "ja", "zh"}
    assert manifest["settings"]["normalization_rule_name"] == "identity"


def test_encoding_is_lossless_on_cjk_emoji_and_whitespace(model_dir, curated):
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    texts = [d for docs in curated[1].values() for d in docs]
    texts.append("  double  spaces,\ttabs\n\nand emoji 🎉🐈 (not in the sample) ")
    assert all(sp.decode(ids) == text for ids, text in zip(sp.encode(texts), texts))


def test_sample_is_seeded_and_follows_the_mix(curated, tmp_path):
    first = train.write_sample(curated[0], tmp_path / "a.txt", seed=1, max_chars=300_000, mix={})
    again = train.write_sample(curated[0], tmp_path / "b.txt", seed=1, max_chars=300_000, mix={})
    assert first == again and (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()
    other = train.write_sample(curated[0], tmp_path / "c.txt", seed=2, max_chars=300_000, mix={})
    assert (tmp_path / "c.txt").read_bytes() != (tmp_path / "a.txt").read_bytes()
    assert 200_000 < first["characters"] < 400_000
    mixed = train.write_sample(curated[0], tmp_path / "d.txt", seed=1, max_chars=300_000,
                               mix=train.parse_mix("zh=3,en/head=1"))
    taken = {g: c["characters"] for g, c in mixed["groups"].items() if c["characters"]}
    assert set(taken) == {"zh/head", "zh/middle", "en/head"}
    assert 2 < (taken["zh/head"] + taken["zh/middle"]) / taken["en/head"] < 4


def test_sample_reads_parquet_without_language_or_bucket(curated, tmp_path):
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"raw_content": curated[1]["en"]}), plain)
    sample = train.write_sample(plain, tmp_path / "s.txt", seed=0, max_chars=10**9, mix={})
    assert sample["groups"] == {"unknown/unknown": {"input_characters": sum(map(len, curated[1]["en"])),
                                                   "documents": len(curated[1]["en"]),
                                                   "characters": sum(map(len, curated[1]["en"]))}}


def test_vocabulary_is_reduced_for_a_small_sample(curated, tmp_path, capsys):
    manifest = train.train(curated[0], tmp_path, vocab_size=32000, max_chars=150_000,
                           mix={"en": 1.0}, threads=2)
    assert manifest["requested_vocab_size"] == 32000
    assert manifest["vocab_size"] == manifest["sample"]["characters"] // train.CHARS_PER_PIECE < 32000
    assert "supports at most" in capsys.readouterr().err
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert sp.get_piece_size() == manifest["vocab_size"]


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*-*.*")) if p.suffix in (".bin", ".idx")}


JOB = dict(seed=7, val_fraction=0.1, shard_tokens=150_000)


@pytest.fixture(scope="module")
def shards(spark, curated, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    stats = tokenize.run(spark, str(curated[0]), model_dir, out, **JOB)
    return out, stats


def test_shards_decode_back_to_the_input(shards, curated, model_dir):
    out, stats = shards
    sha = tokenizer_hash(model_dir / "tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    decoded, per_split = [], {}
    for idx in sorted(out.glob("*.idx")):
        reader = ShardReader(idx.with_suffix(""), expected_tokenizer_sha256=sha, expected_vocab_size=VOCAB)
        assert reader.dtype == np.dtype("<u2")
        for i in range(len(reader)):
            doc = reader.document(i)
            assert doc[0] == sp.bos_id() and doc[-1] == sp.eos_id()
            decoded.append(sp.decode(doc[1:-1].tolist()))
        split = idx.name.split("-")[0]
        per_split[split] = per_split.get(split, 0) + reader.num_tokens
    inputs = [d for docs in curated[1].values() for d in docs]
    assert sorted(decoded) == sorted(inputs)  # every document once, exactly, including ja and zh
    assert {s: v["num_tokens"] for s, v in stats["splits"].items()} == per_split
    plan = json.loads((out / "plan.json").read_text())
    for split, totals in stats["splits"].items():  # shard counts come from an estimate within a few %
        assert abs(plan["estimated_tokens"][split] / totals["num_tokens"] - 1) < 0.05
        assert totals["shards"] == -(-plan["estimated_tokens"][split] // JOB["shard_tokens"])
    assert stats["splits"]["train"]["shards"] > 1
    assert 0.05 < stats["splits"]["val"]["num_docs"] / len(inputs) < 0.15
    languages = {g.split("/")[1] for g in stats["groups"]}
    assert languages == {"en", "ja", "zh"}
    assert sum(g["tokens"] for g in stats["groups"].values()) == sum(per_split.values())


def test_rerun_and_restart_give_identical_bytes(spark, shards, curated, model_dir, tmp_path):
    first, _ = shards
    second = tmp_path / "second"
    tokenize.run(spark, str(curated[0]), model_dir, second, **JOB)
    assert shard_bytes(second) == shard_bytes(first)

    # A run killed midway: one shard never written, one with its .bin renamed but not its .idx,
    # and a writer's temporary file left behind.
    (second / "train-00001.bin").unlink()
    (second / "train-00001.idx").unlink()
    (second / "val-00000.idx").unlink()
    (second / "train-00000.bin.tmp4242").write_bytes(b"half a shard")
    kept = (second / "train-00000.bin").stat().st_mtime_ns
    stats = tokenize.run(spark, str(curated[0]), model_dir, second, **JOB)
    assert stats["shards_written"] == ["train-00001", "val-00000"]
    assert (second / "train-00000.bin").stat().st_mtime_ns == kept
    assert not list(second.glob("*.tmp*"))
    assert shard_bytes(second) == shard_bytes(first)
    assert json.loads((second / "stats.json").read_text())["splits"] == json.loads((first / "stats.json").read_text())["splits"]

    with pytest.raises(ValueError, match="other settings"):
        tokenize.run(spark, str(curated[0]), model_dir, second, **{**JOB, "seed": 8})


def test_inspect_prints_header_counts_and_documents(shards, curated):
    out, stats = shards
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    run = lambda *args: subprocess.run([sys.executable, "-m", "tokenizer.inspect", *args],  # noqa: E731
                                       capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    result = run(str(out / "val-00000.idx"), "--json")
    assert result.returncode == 0, result.stderr
    header = json.loads(result.stdout)
    assert header["num_docs"] == stats["splits"]["val"]["num_docs"] and header["dtype"] == "uint16"
    result = run(str(out / "val-00000"), "--decode", "2")
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    inputs = {d for texts in curated[1].values() for d in texts}
    assert len(docs) == 2 and all(d in inputs for d in docs)
    result = run(str(out / "train-00000"))
    assert "document length (tokens)" in result.stdout and "--- document 0:" in result.stdout
    shutil.copy(out / "val-00000.idx", out / "broken.idx")
    shutil.copy(out / "train-00000.bin", out / "broken.bin")
    result = run(str(out / "broken"))
    assert result.returncode == 1 and "broken.bin" in result.stderr
