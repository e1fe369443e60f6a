"""The Stack Exchange source without Spark, on the real Posts.xml of beer.stackexchange.com and
coffee.stackexchange.com (../shared/data/stackexchange): one document per question, answers by score,
no HTML left, the same documents from the site's .7z, through the on-disk join, and hostile XML refused.
The expected questions, answers and scores come from the stdlib's ElementTree over the same files."""

from __future__ import annotations

import io
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import py7zr
import pytest

from curation.pipeline import run_stages, stage_stats
from curation.sources.stackexchange import (
    SOURCE,
    StackExchangeSettings,
    UnsafeXML,
    left_out,
    post_text,
    site_inputs,
    site_of,
)

SITES = ("beer.stackexchange.com", "coffee.stackexchange.com")
SETTINGS = StackExchangeSettings()
HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
HTML_ENTITY = re.compile(r"&(?:[A-Za-z]+|#[0-9]+|#x[0-9A-Fa-f]+);")


def posts_xml(shared_data: Path, site: str) -> Path:
    return shared_data / "stackexchange" / site / "Posts.xml"


def curate(location, settings: StackExchangeSettings = SETTINGS) -> tuple[list[dict], Counter, dict]:
    counts, stages = Counter(), SOURCE.stages(settings)
    docs = list(run_stages(SOURCE.read(str(location), settings, counts), stages))
    return docs, counts, stage_stats(stages)


def expected_threads(path: Path) -> tuple[dict[int, dict], dict[int, list[dict]], Counter]:
    """Questions by id, answers by question id and post types, from ElementTree over the whole file."""
    rows = [row.attrib for row in ET.parse(path).getroot()]
    questions = {int(r["Id"]): r for r in rows if r["PostTypeId"] == "1"}
    answers = defaultdict(list)
    for row in rows:
        if row["PostTypeId"] == "2":
            answers[int(row["ParentId"])].append(row)
    return questions, answers, Counter(row["PostTypeId"] for row in rows)


def seven_zip(files: dict[str, bytes], renamed: dict[str, str] | None = None) -> bytes:
    """A 7z archive of `files` as py7zr writes it; `renamed` {name: hostile name of the same length} are
    then written into its header (py7zr refuses to store `../../x`; 7-Zip itself does not)."""
    out = io.BytesIO()
    with py7zr.SevenZipFile(out, "w", filters=[{"id": py7zr.FILTER_LZMA2, "preset": 1}]) as archive:  # the dump's
        archive.set_encoded_header_mode(False)  # names in clear, to be renamed
        for name, data in files.items():
            archive.writestr(data, name)
    data = bytearray(out.getvalue())
    offset, size = struct.unpack_from("<QQ", data, 12)
    header = bytes(data[32 + offset:32 + offset + size])
    for name, hostile in (renamed or {}).items():
        header = header.replace(name.encode("utf-16-le"), hostile.encode("utf-16-le"))
    data[32 + offset:32 + offset + size] = header
    struct.pack_into("<I", data, 28, zlib.crc32(header))  # the next header's CRC, then the start header's
    struct.pack_into("<I", data, 8, zlib.crc32(bytes(data[12:32])))
    return bytes(data)


@pytest.fixture(scope="module")
def curated(shared_data):
    return {site: curate(posts_xml(shared_data, site)) for site in SITES}


@pytest.mark.parametrize("site", SITES)
def test_one_document_per_question_its_answers_by_score(curated, shared_data, site):
    docs, counts, stages = curated[site]
    questions, answers, kinds = expected_threads(posts_xml(shared_data, site))
    assert sorted(doc["question_id"] for doc in docs) == sorted(questions)
    assert counts["in"] == sum(kinds.values())
    assert counts["dropped.other_post_type"] == sum(n for kind, n in kinds.items() if kind not in ("1", "2"))
    assert counts["answers"] == kinds["2"] and not counts["dropped.orphan_answer"]
    assert stages["answers_by_score"]["out"] == len(questions)
    for doc in docs:
        mine = sorted(answers[doc["question_id"]], key=lambda a: (-int(a["Score"]), int(a["Id"])))
        assert doc["answer_ids"] == [int(a["Id"]) for a in mine]
        assert doc["answer_scores"] == sorted(doc["answer_scores"], reverse=True)
        question = questions[doc["question_id"]]
        assert doc["raw_content"].startswith(f"Q: {question['Title']}\n")
        assert doc["score"] == int(question["Score"]) and doc["url"] == f"https://{site}/questions/{doc['question_id']}"
        positions = [doc["raw_content"].index(f"A: {post_text(a['Body'])}") for a in mine]
        assert positions == sorted(positions)  # the answers' texts, in score order


@pytest.mark.parametrize("site", SITES)
def test_no_html_tag_or_entity_is_left(curated, shared_data, site):
    docs, _, _ = curated[site]
    bodies = [row.attrib.get("Body", "") for row in ET.parse(posts_xml(shared_data, site)).getroot()]
    assert sum(bool(HTML_TAG.search(body)) for body in bodies) > len(bodies) / 2  # the dump's bodies are HTML
    assert not [doc["question_id"] for doc in docs if HTML_TAG.search(doc["raw_content"])]
    assert not [doc["question_id"] for doc in docs if HTML_ENTITY.search(doc["raw_content"])]
    assert all(doc["tags"] for doc in docs)


def test_the_sites_archive_as_the_dump_ships_it_gives_the_same_documents(curated, shared_data, tmp_path):
    archive = tmp_path / "beer.stackexchange.com.7z"
    archive.write_bytes(seven_zip({"Badges.xml": posts_xml(shared_data, SITES[1]).read_bytes(),
                                   "Posts.xml": posts_xml(shared_data, SITES[0]).read_bytes()}))
    docs, counts, _ = curate(archive)
    assert docs == curated[SITES[0]][0]
    assert counts == curated[SITES[0]][1]  # the other table is not read


def test_a_join_through_local_disk_gives_the_same_documents(curated, shared_data, tmp_path):
    settings = replace(SETTINGS, join_memory_bytes=2**20, spill_directory=str(tmp_path))  # beer: 2.5 MB of posts
    docs, counts, _ = curate(posts_xml(shared_data, SITES[0]), settings)
    expected = curated[SITES[0]]
    assert sorted(docs, key=lambda d: d["question_id"]) == expected[0] and counts == expected[1]
    assert not list(tmp_path.iterdir())  # the spill files are gone


def test_a_row_over_the_cap_is_counted_and_skipped(curated, shared_data):
    cap = 4000  # 34 of beer's rows, one a question: its answers are left without it
    data = posts_xml(shared_data, SITES[0]).read_bytes()
    too_large = [piece for piece in data.split(b"<") if len(piece) + 1 > cap]
    ids = {int(re.search(rb' Id="(\d+)"', piece)[1]) for piece in too_large}
    questions, answers, _ = expected_threads(posts_xml(shared_data, SITES[0]))
    docs, counts, _ = curate(posts_xml(shared_data, SITES[0]), replace(SETTINGS, max_record_bytes=cap))
    assert counts["dropped.record_too_large"] == len(too_large) == len(ids) > 0
    assert counts["in"] == curated[SITES[0]][1]["in"]  # every row read, some cut out
    assert sorted(doc["question_id"] for doc in docs) == sorted(set(questions) - ids)
    of_cut_questions = {int(a["Id"]) for qid in ids for a in answers.get(qid, [])}
    assert counts["dropped.orphan_answer"] == len(of_cut_questions - ids) > 0  # the answers of a question cut out
    every_answer = {int(a["Id"]) for found in answers.values() for a in found}
    assert {a for doc in docs for a in doc["answer_ids"]} == every_answer - ids - of_cut_questions


def hostile_posts(shared_data: Path, doctype: str, entity: str) -> bytes:
    """The real Posts.xml of coffee with a DOCTYPE and one body that uses its entity."""
    text = posts_xml(shared_data, SITES[1]).read_text(encoding="utf-8-sig")
    text = text.replace("<posts>", f"{doctype}\n<posts>", 1).replace('Body="', f'Body="{entity} ', 1)
    return text.encode()


BILLION_LAUGHS = "<!DOCTYPE posts [<!ENTITY lol \"lol\">" + "".join(
    f'<!ENTITY lol{k} "{f"&lol{k - 1};" * 10 if k > 1 else "&lol;" * 10}">' for k in range(1, 10)) + "]>"


@pytest.mark.parametrize("doctype, entity, says", [
    (BILLION_LAUGHS, "&lol9;", "the entity 'lol'"),
    ('<!DOCTYPE posts [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', "&xxe;", "file:///etc/passwd"),
])
def test_entity_declarations_are_refused(shared_data, tmp_path, doctype, entity, says):
    hostile = tmp_path / "hostile.stackexchange.com" / "Posts.xml"
    hostile.parent.mkdir()
    hostile.write_bytes(hostile_posts(shared_data, doctype, entity))
    counts, docs = Counter(), []
    with pytest.raises(UnsafeXML, match="entity declarations are refused") as refused:
        docs.extend(SOURCE.read(str(hostile), SETTINGS, counts))
    assert says in str(refused.value) and not docs
    assert "root:" not in str(refused.value)


def test_the_largest_sites_are_chosen_and_other_tables_left_out(shared_data, tmp_path):
    dump = tmp_path / "dump"
    dump.mkdir()
    coffee = posts_xml(shared_data, SITES[1]).read_bytes()
    (dump / "coffee.stackexchange.com.7z").write_bytes(seven_zip({"Posts.xml": coffee}))
    (dump / "stackoverflow.com-Posts.7z").write_bytes(seven_zip({"Posts.xml": coffee}))
    (dump / "stackoverflow.com-Comments.7z").write_bytes(seven_zip({"Comments.xml": coffee}))
    (dump / "Sites.xml").write_bytes(coffee)
    inputs = [*site_inputs(str(dump)), str(posts_xml(shared_data, SITES[0]))]
    assert [site_of(i) for i in inputs] == ["coffee.stackexchange.com", "stackoverflow.com", "stackoverflow.com",
                                            "beer.stackexchange.com"]
    sizes = {location: Path(location).stat().st_size for location in inputs}
    assert left_out(sizes, SETTINGS) == {inputs[1]: "the Comments table of stackoverflow.com: only Posts is read"}
    largest = left_out(sizes, replace(SETTINGS, largest_sites=1))
    assert set(largest) == {inputs[0], inputs[1], inputs[2]}  # beer's 2.5 MB Posts.xml is the largest
    assert largest[inputs[0]] == "not among the 1 largest sites given"
    chosen = left_out(sizes, replace(SETTINGS, sites=["coffee.stackexchange.com"]))
    assert set(chosen) == {inputs[1], inputs[2], inputs[3]}
