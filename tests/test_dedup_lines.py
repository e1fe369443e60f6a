"""CCNet line dedup: hand-made cases, Spark == single process on real WET pages, scopes, the CLI."""

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import schema
from curation.dedup_lines import (
    LINE_HASHES,
    DuplicateLinesRemover,
    LineDedupSettings,
    LineDedupStage,
    apply_dedup,
    document_counts,
    document_hashes,
    duplicated_hashes,
    hashes_of,
    line_hash,
    line_hash_column,
)
from curation.normalize import normalize_for_dedup

BOILERPLATE = "Copyright © 2019 Example Corp. All rights reserved."


def letters(n: int) -> str:
    """A number spelled in letters (digits would all normalize to 0)."""
    return "".join(chr(ord("a") + int(c)) for c in str(n))


def page(i: int, extra: list[str] = ()) -> str:
    body = [f"Page {letters(i)} is about its own subject and says something only it says, sentence "
            f"{letters(k)}, with a unique token {letters(i)}x{letters(k)} and words enough to pass the floor."
            for k in range(4)]
    return "\n".join(["Home | About | Contact", *body, *extra, BOILERPLATE])


def docs_of(texts):
    return [{"url": f"https://site{i}.example/", "raw_content": t} for i, t in enumerate(texts)]


def test_line_hash_is_ccnet():
    line = "  Hello, World 2019 «quoted»  "
    digest = hashlib.sha1(normalize_for_dedup(line).encode("utf-8")).digest()[:8]
    assert line_hash(line) == int.from_bytes(digest, "little", signed=True)
    # Normalization: case, digits, unicode punctuation, surrounding spaces do not matter.
    assert line_hash("Hello, World 2019 «quoted»") == line_hash("hello, world 1234 quoted ")
    assert line_hash("Hello, World!") != line_hash("Hello, World")   # ASCII punctuation kept
    assert line_hash("café") != line_hash("cafe")                    # accents kept


def test_boilerplate_removed_everywhere_and_repeats_inside_a_page_kept_once():
    texts = [page(0), page(1), page(2, extra=["A line repeated twice in this page only.",
                                              "A line repeated twice in this page only."])]
    stage = LineDedupStage()
    out = list(stage(docs_of(texts)))
    assert len(out) == 3
    for doc, text in zip(out, texts):
        lines = doc["raw_content"].split("\n")
        # Seen on more than one page: removed from every page, the first included.
        assert BOILERPLATE not in lines and "Home | About | Contact" not in lines
        assert doc["original_length"] == len(text) and doc["original_nlines"] == len(text.split("\n"))
        assert doc["length"] == len(doc["raw_content"]) and doc["nlines"] == len(lines)
    assert out[2]["raw_content"].split("\n").count("A line repeated twice in this page only.") == 1
    assert out[0]["nlines"] == 4 and out[2]["nlines"] == 5
    assert stage.stats["lines_removed"] == 2 * 3 + 1


def test_normalized_duplicates_and_drops():
    first = page(0, extra=["Call us: 555-1234!"])
    second = page(1, extra=["CALL US: 999-0000!"])             # same line once normalized
    short = "Too short to keep."
    emptied = "\n".join(["Home | About | Contact", BOILERPLATE] * 20)  # long, but only boilerplate
    shrunk = "\n".join(["Home | About | Contact", "Short unique line.", BOILERPLATE] * 20)
    docs = docs_of([first, second, short, emptied, shrunk])
    stage = LineDedupStage()  # cc_net: only documents left with no line are dropped
    out = {d["url"]: d for d in stage(docs)}
    assert set(out) == {"https://site0.example/", "https://site1.example/", "https://site2.example/",
                        "https://site4.example/"}
    assert "Call us: 555-1234!" not in out["https://site0.example/"]["raw_content"]
    assert out["https://site4.example/"]["raw_content"] == "Short unique line."
    assert stage.stats["dropped.empty"] == 1 and not stage.stats["dropped.too_short"]

    # The floor on the text as read, and the extra floor after dedup (min_length_after=300).
    stage = LineDedupStage(LineDedupSettings(min_length_after=300), min_length=300)
    out = {d["url"]: d for d in stage(docs)}
    assert set(out) == {"https://site0.example/", "https://site1.example/"}
    assert stage.stats["dropped.too_short"] == 2      # `short` before dedup, `shrunk` after
    assert stage.stats["dropped.empty"] == 1


def test_apply_dedup():
    text = "a\nb\na\n\nc\n"
    hashes = document_hashes(text)
    assert hashes.tolist() == [line_hash(line) for line in text.split("\n")]
    out, reason, removed = apply_dedup({"raw_content": text}, hashes, np.zeros(0, np.int64))
    assert (out["raw_content"], out["nlines"], out["length"], reason, removed) == ("a\nb\n\nc", 4, 6, None, 2)
    assert (out["original_nlines"], out["original_length"]) == (6, len(text))
    out, reason, removed = apply_dedup({"raw_content": text}, hashes, np.array([line_hash("b")]))
    assert (out["raw_content"], out["nlines"], removed) == ("a\n\nc", 3, 3)
    out, reason, _ = apply_dedup({"raw_content": "b\nb"}, document_hashes("b\nb"), np.array([line_hash("b")]))
    assert (out["raw_content"], out["nlines"], reason) == ("", 0, "empty")


def wet_documents(shared_data, limit=120):
    from warcio.archiveiterator import ArchiveIterator

    docs = []
    with open(shared_data / "wet" / "CC-MAIN-2019-30-697-docs.warc.wet.gz", "rb") as stream:
        for record in ArchiveIterator(stream):
            if record.rec_type == "conversion":
                docs.append({"url": record.rec_headers.get_header("WARC-Target-URI"),
                             "raw_content": record.content_stream().read().decode("utf-8", "replace")})
            if len(docs) == limit:
                break
    return docs


def test_spark_equals_single_process_on_real_pages(spark, shared_data):
    from jobs.dedup import line_dedup

    docs = wet_documents(shared_data)
    for i, d in enumerate(docs):
        d["cc_segment"] = f"seg{i % 2}" if i % 5 else None     # null group: one group of its own
    df = spark.createDataFrame(docs).repartition(3)

    kept, stats = line_dedup(df)
    got = {(r["url"], r["raw_content"], r["length"], r["nlines"], r["original_length"], r["original_nlines"])
           for r in kept.collect()}
    stage = LineDedupStage()
    local = list(stage(docs))
    assert got == {(d["url"], d["raw_content"], d["length"], d["nlines"], d["original_length"], d["original_nlines"])
                   for d in local}
    assert stats["in"] == len(docs) and stats["out"] == len(local) == stage.stats["out"]
    assert stats["lines_removed"] == stage.stats["lines_removed"] > 0
    assert stats["dropped"] == {k.removeprefix("dropped."): v for k, v in stage.stats.items()
                                if k.startswith("dropped.")}

    # A group per segment: counts only within each group (CCNet's groups of files).
    kept_scoped, scoped = line_dedup(df, group="cc_segment")
    local_scoped = []
    for seg in ("seg0", "seg1", None):
        local_scoped += list(LineDedupStage()(d for d in docs if d["cc_segment"] == seg))
    assert {(r["url"], r["raw_content"]) for r in kept_scoped.collect()} == \
        {(d["url"], d["raw_content"]) for d in local_scoped}
    assert scoped["lines_removed"] <= stats["lines_removed"]


def test_two_passes_over_stored_hashes_equal_one_group_in_memory(shared_data):
    """cc_net's design as phase 2 runs it: each segment's line hashes stored as a column, the group's
    duplicated lines from the segments' document counts, then each document's lines removed alone."""
    docs = wet_documents(shared_data)
    segments = [docs[:100], docs[100:250], docs[250:]]
    columns = [line_hash_column([d["raw_content"] for d in segment]) for segment in segments]
    duplicated = duplicated_hashes(document_counts(hashes_of(column)) for column in columns)
    remover = DuplicateLinesRemover(duplicated)
    stored = [{**d, LINE_HASHES: hashes} for segment, column in zip(segments, columns)
              for d, hashes in zip(segment, hashes_of(pa.chunked_array([column])))]
    stored[5].pop(LINE_HASHES)  # a segment stored without its hashes: computed from the text
    two_passes = list(remover(stored))

    stage = LineDedupStage()
    one_group = list(stage(docs))
    assert two_passes == one_group and len(one_group) < len(docs)
    assert {k: v for k, v in remover.stats.items() if k != "seconds"} == \
        {k: v for k, v in stage.stats.items() if k != "seconds"} | {"lines_in": sum(len(d["raw_content"].split("\n"))
                                                                                  for d in docs)}


def test_doc_id_is_sparks_xxhash64(spark):
    from jobs.minhash import with_doc_id

    rows = [("https://a.example/é", "text\nü"), (None, "no url"), ("https://b.example/", ""), ("u" * 300, "x" * 5000)]
    frame = with_doc_id(spark.createDataFrame(rows, "url string, raw_content string"))
    assert [(r["url"], r["raw_content"], r["_doc_id"]) for r in frame.collect()] == \
        [(url, text, schema.doc_id(url, text)) for url, text in rows]


def test_cli(spark, shared_data, tmp_path):
    from jobs.dedup import main

    docs = wet_documents(shared_data, limit=60)
    copy = dict(docs[5], url=docs[5]["url"] + "?copy")            # an exact copy of a page body
    pq.write_table(pa.Table.from_pylist(docs + [copy]), tmp_path / "in.parquet")
    stats = main(["--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"),
                  "steps=[minhash]", "--master", "local[2]"])
    written = pq.read_table(tmp_path / "out" / "data").to_pylist()
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["minhash"]["in"] == len(docs) + 1
    assert stats["minhash"]["out"] == len(written) <= len(docs)
    assert {"minhash_cluster", "minhash_cluster_size", "url", "raw_content"} <= set(written[0])
    assert "_doc_id" not in written[0]
    urls = {d["url"] for d in written}
    assert not {docs[5]["url"], copy["url"]} <= urls
