"""Tokenizer training, the shard job and the inspector, on real texts from ../shared/data."""

import hashlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from bench.corpus import real_documents
from jobs import shards as shard_job
from tokenizer import encode, train
from tokenizer.shards import ShardReader, tokenizer_hash

REPO_ROOT = Path(__file__).resolve().parent.parent
VOCAB = 4000  # small enough to train in seconds; CJK needs coverage below the default to fit it
COVERAGE = 0.99


def write_curated(shared_data: Path, root: Path) -> dict[str, list[str]]:
    """Curated-style Parquet (zstd) in Hive partitions language=xx/bucket=yy, two files a partition."""
    docs = real_documents(shared_data)
    for lang, texts in docs.items():
        for b, bucket in enumerate(("head", "middle")):
            part = texts[b::2]
            directory = root / f"language={lang}" / f"bucket={bucket}"
            directory.mkdir(parents=True, exist_ok=True)
            for f in range(2):
                pq.write_table(pa.table({"raw_content": part[f::2]}), directory / f"part-{f}.parquet",
                               compression="zstd")
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
    proto = proto_fields(model.read_bytes())
    spec = proto_fields(proto[2][0])  # ModelProto.trainer_spec
    assert spec[3] == [2]  # TrainerSpec.model_type: BPE
    assert spec[25] == [1] and spec[35] == [1]  # split_digits, byte_fallback
    assert spec[26] == [1] and spec[21] == [1]  # allow_whitespace_only_pieces, split_by_unicode_script
    assert spec[18] == [4192]  # max_sentence_length, as in LLaMA's tokenizer.model
    assert spec[43] == [2**64 - 1]  # pad_id -1 (a negative int32 is a 10-byte varint)
    normalizer = proto_fields(proto[3][0])  # ModelProto.normalizer_spec: identity, dummy prefix, spaces kept
    assert normalizer[1] == [b"identity"] and normalizer[3] == [1] and normalizer[4] == [0]
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert sp.get_piece_size() == VOCAB
    assert [sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()] == [0, 1, 2, -1]
    # LLaMA's layout: the 256 byte pieces right after the three specials.
    assert [sp.id_to_piece(i) for i in range(3, 259)] == [f"<0x{b:02X}>" for b in range(256)]
    assert all(sp.is_byte(i) for i in range(3, 259)) and not sp.is_byte(259)
    assert [p for p in sp.encode("2019", out_type=str) if p != "▁"] == ["2", "0", "1", "9"]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert manifest["model_type"] == "bpe" and manifest["vocab_size"] == VOCAB
    assert {g.split("/")[0] for g in manifest["sample"]["groups"]} == {"en", "ja", "zh"}
    assert manifest["settings"]["normalization_rule_name"] == "identity"
    assert manifest["pad_id"] == -1 and manifest["settings"]["max_sentence_length"] == 4192


def test_encoding_is_lossless_on_cjk_emoji_and_whitespace(model_dir, curated):
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    texts = [d for docs in curated[1].values() for d in docs]
    texts.append("  double  spaces,\ttabs\n\nand emoji 🎉🐈 (not in the sample) ")
    assert all(sp.decode(ids) == text for ids, text in zip(sp.encode(texts), texts))


def test_sample_is_seeded_and_follows_the_mix(curated, tmp_path):
    first = train.write_sample(curated[0], tmp_path / "a.txt", seed=1, max_chars=300_000, mix={})
    again = train.write_sample(curated[0], tmp_path / "b.txt", seed=1, max_chars=300_000, mix={})
    assert first == again and (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()
    train.write_sample(curated[0], tmp_path / "c.txt", seed=2, max_chars=300_000, mix={})
    assert (tmp_path / "c.txt").read_bytes() != (tmp_path / "a.txt").read_bytes()
    assert 200_000 < first["characters"] < 400_000
    mixed = train.write_sample(curated[0], tmp_path / "d.txt", seed=1, max_chars=300_000,
                               mix={"zh": 3, "en/head": 1})
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


# The trainer_spec and normalizer_spec of Meta's LLaMA tokenizer.model, as SentencePieceTrainer options.
META_SPEC = dict(model_type="bpe", character_coverage=0.99995, input_sentence_size=200_000_000,
                 seed_sentencepiece_size=1_000_000, shrinking_factor=0.75, num_sub_iterations=2,
                 max_sentence_length=4192, shuffle_input_sentence=True, max_sentencepiece_length=16,
                 split_by_unicode_script=True, split_by_whitespace=True, split_by_number=True,
                 treat_whitespace_as_suffix=False, split_digits=True, allow_whitespace_only_pieces=True,
                 vocabulary_output_piece_score=True, hard_vocab_limit=True, use_all_vocab=False, byte_fallback=True,
                 unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity", add_dummy_prefix=True,
                 remove_extra_whitespaces=False)


def test_trainer_settings_are_those_of_meta_tokenizer():
    options = train.trainer_options("sample.txt", "prefix", 32000, train.TokenizerSettings.character_coverage, 1)
    ours = {k: v for k, v in options.items() if k not in ("input", "model_prefix", "vocab_size", "num_threads",
                                                         "minloglevel")}
    assert set(ours) <= set(META_SPEC)
    assert ours == {k: META_SPEC[k] for k in ours}
    assert inspect.signature(train.train).parameters["character_coverage"].default == META_SPEC["character_coverage"]


def test_lines_over_llama_max_sentence_length_are_counted_and_left_out(tmp_path):
    long_line = "x" * 5000
    pq.write_table(pa.table({"raw_content": [f"short line\n{long_line}\nanother short line"]}), tmp_path / "a.parquet")
    sample = train.write_sample(tmp_path / "a.parquet", tmp_path / "s.txt", seed=0, max_chars=10**9, mix={})
    assert sample["long_lines_left_out"] == {"lines": 1, "characters": 5000} and sample["sentences"] == 2
    assert (tmp_path / "s.txt").read_text() == "short line\nanother short line\n"


def test_shards_accept_a_tokenizer_model_made_with_meta_settings(spark, shared_data, curated, tmp_path):
    """`make shards` with a bare tokenizer.model trained as Meta trained LLaMA's (no manifest beside it)."""
    lines = [line for line in (shared_data / "text" / "botchan.en.txt").read_text(encoding="utf-8").splitlines()
             if line.strip()]
    (tmp_path / "llama").mkdir()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / "llama" / "tokenizer"),
                                   vocab_size=1000, num_threads=1, minloglevel=2, **META_SPEC)
    model = tmp_path / "llama" / "tokenizer.model"
    stats = shard_job.run(spark, str(curated[0]), model, tmp_path / "shards", seed=1, val_fraction=0.1,
                         shard_tokens=10**9)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    decoded, byte_tokens = [], 0
    for idx in sorted((tmp_path / "shards").glob("*.idx")):
        reader = ShardReader(idx.with_suffix(""), expected_tokenizer_sha256=tokenizer_hash(model),
                             expected_vocab_size=1000)
        for i in range(len(reader)):
            doc = reader.document(i)
            assert doc[0] == 1 and doc[-1] == 2  # LLaMA's bos and eos
            byte_tokens += int(((doc >= 3) & (doc <= 258)).sum())
            decoded.append(sp.decode(doc[1:-1].tolist()))
    assert sorted(decoded) == sorted(d for docs in curated[1].values() for d in docs)
    assert byte_tokens > 1000  # Japanese and Chinese, unseen by this English model, went through byte fallback
    assert stats["settings"]["tokenizer_sha256"] == tokenizer_hash(model).hex()


def test_vocabulary_is_reduced_for_a_small_sample(curated, tmp_path, capsys):
    manifest = train.train(curated[0], tmp_path, vocab_size=32000, max_chars=150_000,
                           mix={"en": 1.0}, threads=2)
    assert manifest["requested_vocab_size"] == 32000
    assert manifest["vocab_size"] == manifest["sample"]["characters"] // train.CHARS_PER_PIECE < 32000
    assert "supports at most" in capsys.readouterr().err
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert sp.get_piece_size() == manifest["vocab_size"]


def test_command_line_settings_reach_the_trainer(curated, tmp_path, capsys):
    train.main(["--input", str(curated[0]), "--output", str(tmp_path), "vocab_size=1000", "seed=3",
                "max_chars=200000", "mix.en=1", "character_coverage=0.99", "threads=2"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["requested_vocab_size"] == manifest["vocab_size"] == 1000
    assert manifest["seed"] == 3 and manifest["max_chars"] == 200_000 and manifest["mix"] == {"en": 1.0}
    assert {g for g, c in manifest["sample"]["groups"].items() if c["documents"]} == {"en/head", "en/middle"}
    assert manifest["settings"]["character_coverage"] == 0.99 and manifest["settings"]["num_threads"] == 2
    assert json.loads(capsys.readouterr().out)["sha256"] == manifest["sha256"]


@pytest.mark.parametrize("command, bad, message", [
    ("tokenizer.train", "vocab_size=many", "vocab_size='many': expected an integer"),
    ("tokenizer.train", "mix.en=-1", "mix.en=-1.0: expected a value in [0, ∞]"),
    ("jobs.shards", "val_fraction=1.5", "val_fraction=1.5: expected a value in [0, 1]"),
    ("jobs.shards", "add_bos=maybe", "add_bos='maybe': expected true or false"),
])
def test_commands_refuse_a_bad_setting_at_once_and_print_the_effective_ones(command, bad, message, tmp_path):
    started = time.monotonic()
    refused = subprocess.run([sys.executable, "-m", command, "--input", "in", "--output", str(tmp_path / "out"), bad],
                             cwd=REPO_ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr == f"error: {message}\n"  # one line, no traceback
    assert time.monotonic() - started < 5 and not (tmp_path / "out").exists()  # before Spark or any work
    shown = subprocess.run([sys.executable, "-m", command, "--print-settings", "seed=5", "--input", "in"],
                           cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert "\nseed: 5 " in shown and "\ninput: in " in shown


def test_large_row_groups_are_cut_into_units_that_cover_them_once(curated, model_dir, tmp_path):
    texts = [d for docs in curated[1].values() for d in docs]
    pq.write_table(pa.table({"raw_content": texts}), tmp_path / "one.parquet", row_group_size=len(texts))
    dataset = encode.open_dataset(tmp_path / "one.parquet")
    units = encode.list_units(dataset, unit_text_bytes=300_000)  # ~9 row ranges across 1,024-row batches
    assert len(units) > 5 and {u.row_group for u in units} == {0}
    assert [u.first_row for u in units[1:]] == [u.first_row + u.rows for u in units[:-1]]
    assert sum(u.rows for u in units) == len(texts)
    model = model_dir / "tokenizer.model"
    settings = encode.ShardSettings(val_fraction=0.0, add_bos=False, add_eos=False)
    for unit in units:  # without Spark
        encode.encode_unit(unit, dataset.filesystem, str(model), tokenizer_hash(model), settings, tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    decoded = []
    for unit in units:
        part = ShardReader(tmp_path / f"{unit.name}.train")
        decoded += [sp.decode(part.document(i).tolist()) for i in range(len(part))]
    assert decoded == texts


def test_layout_cuts_each_split_at_document_starts():
    def counts(unit, train_tokens, val_tokens):
        return {"unit": unit, "splits": {"train": {"tokens": train_tokens}, "val": {"tokens": val_tokens}}}

    shards = encode.lay_out([counts("u0", 5, 0), counts("u1", 0, 3), counts("u2", 7, 0)], shard_tokens=4)
    assert [(s["name"], s["begin"], s["end"], s["units"]) for s in shards] == [
        ("train-00000", 0, 4, [["u0", 0]]), ("train-00001", 4, 8, [["u0", 0], ["u2", 5]]),
        ("train-00002", 8, 12, [["u2", 5]]), ("val-00000", 0, 4, [["u1", 0]])]


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*-*.*")) if p.suffix in (".bin", ".idx")}


JOB = dict(seed=7, val_fraction=0.1, shard_tokens=150_000)


@pytest.fixture(scope="module")
def shards(spark, curated, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    stats = shard_job.run(spark, str(curated[0]), model_dir, out, **JOB)
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
    for split, totals in stats["splits"].items():
        names = sorted(n for n in stats["shards"] if n.startswith(split + "-"))
        assert totals["shards"] == len(names) == -(-totals["num_tokens"] // JOB["shard_tokens"])
        position = 0
        for i, name in enumerate(names):  # shard i: the documents that start in [i·T, (i+1)·T) of the split
            reader = ShardReader(out / name)
            starts = position + np.asarray(reader.offsets[:-1], dtype=np.int64)
            assert len(starts) and (starts >= i * JOB["shard_tokens"]).all()
            assert (starts < (i + 1) * JOB["shard_tokens"]).all()
            position += reader.num_tokens
    assert not (out / "parts").exists() and stats["units"] == {"total": 12, "encoded": 12}
    assert stats["splits"]["train"]["shards"] > 1
    assert 0.05 < stats["splits"]["val"]["num_docs"] / len(inputs) < 0.15
    languages = {g.split("/")[1] for g in stats["groups"]}
    assert languages == {"en", "ja", "zh"}
    assert sum(g["tokens"] for g in stats["groups"].values()) == sum(per_split.values())


def test_rerun_and_restart_give_identical_bytes(spark, shards, curated, model_dir, tmp_path):
    first, _ = shards
    second = tmp_path / "second"
    shard_job.run(spark, str(curated[0]), model_dir, second, **JOB)
    assert shard_bytes(second) == shard_bytes(first)

    # A run killed midway: one shard never written, one with its .bin renamed but not its .idx,
    # and a writer's temporary file left behind.
    (second / "train-00001.bin").unlink()
    (second / "train-00001.idx").unlink()
    (second / "train-00002.idx").unlink()
    (second / f"train-00000.bin.tmp-{'0' * 32}").write_bytes(b"half a shard")
    (second / "notes.tmp.txt").write_text("not the job's: kept")
    kept = (second / "train-00000.bin").stat().st_mtime_ns
    stats = shard_job.run(spark, str(curated[0]), model_dir, second, **JOB)
    assert stats["shards_written"] == ["train-00001", "train-00002"]
    plan = json.loads((second / "plan.json").read_text())
    needed = {u for shard in plan["shards"] if shard["name"] in ("train-00001", "train-00002")
              for u, _ in shard["units"]}
    assert stats["units"] == {"total": 12, "encoded": len(needed)} and len(needed) < 12  # only what they need
    assert (second / "train-00000.bin").stat().st_mtime_ns == kept
    assert [p.name for p in second.glob("*.tmp*")] == ["notes.tmp.txt"]
    assert shard_bytes(second) == shard_bytes(first)
    splits = [json.loads((run / "stats.json").read_text())["splits"] for run in (first, second)]
    assert splits[0] == splits[1]

    with pytest.raises(ValueError, match="other settings"):
        shard_job.run(spark, str(curated[0]), model_dir, second, **{**JOB, "seed": 8})


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        found += frontier
    return found


def test_killed_run_resumes_to_identical_bytes(spark, curated, model_dir, tmp_path):
    """`python -m jobs.shards` killed with SIGKILL while it encodes, then run again."""
    small_row_groups = tmp_path / "curated"
    for path in sorted(curated[0].rglob("*.parquet")):  # the same documents, 16 a row group: 100 units
        target = small_row_groups / path.relative_to(curated[0])
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pq.read_table(path), target, row_group_size=16, compression="zstd")
    reference = tmp_path / "reference"
    units = shard_job.run(spark, str(small_row_groups), model_dir, reference, **JOB)["units"]["total"]
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "jobs.shards", "--input", str(small_row_groups), "--tokenizer", str(model_dir),
               "--output", str(out), "--master", "local[2]", *(f"{k}={v}" for k, v in JOB.items())]
    job = subprocess.Popen(command, cwd=REPO_ROOT, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "parts").glob("*.json")) and time.time() < deadline and job.poll() is None:
        time.sleep(0.02)
    for pid in [job.pid, *descendants(job.pid)]:  # Spark's Python daemon runs in a process group of its own
        os.kill(pid, signal.SIGKILL)
    job.wait()
    done_before = len(list((out / "parts").glob("*.json")))
    assert units == 100 and 1 <= done_before < units and "shards" not in json.loads((out / "plan.json").read_text())
    stats = shard_job.run(spark, str(small_row_groups), model_dir, out, **JOB)
    assert stats["units"]["encoded"] == units - done_before
    assert shard_bytes(out) == shard_bytes(reference)
    assert not list(out.glob("*.tmp*")) and not (out / "parts").exists()


def test_row_groups_are_units_and_empty_documents_are_counted(spark, curated, model_dir, tmp_path):
    texts = curated[1]["en"][:200]
    table = pa.table({"raw_content": texts + ["", None], "language": ["en"] * 100 + [None] * 100 + ["en", "en"]})
    pq.write_table(table, tmp_path / "plain.parquet", row_group_size=50)
    stats = shard_job.run(spark, str(tmp_path / "plain.parquet"), model_dir, tmp_path / "out", seed=1,
                         val_fraction=0.2, shard_tokens=10**9, add_bos=False, add_eos=False)
    assert [u["rows"] for u in json.loads((tmp_path / "out" / "plan.json").read_text())["units"]] == [50, 50, 50, 50, 2]
    assert stats["empty_documents"] == 2
    assert {g for g in stats["groups"] if g.startswith("train/")} == {"train/en/unknown", "train/unknown/unknown"}
    assert sum(c["docs"] for c in stats["groups"].values()) == 200
    assert sum(c["docs"] for g, c in stats["groups"].items() if "/en/" in g) == 100
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    decoded = []
    for split in ("train", "val"):
        reader = ShardReader(tmp_path / "out" / f"{split}-00000")
        decoded += [sp.decode(reader.document(i).tolist()) for i in range(len(reader))]
        assert reader.num_docs == stats["splits"][split]["num_docs"] > 0
    assert sorted(decoded) == sorted(texts)  # no BOS/EOS: the tokens are exactly the text's


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
