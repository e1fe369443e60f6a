"""Stack Exchange (LLaMA: 2.0 %): the 28 largest sites of a data dump, one document per question: its
title and text, then its answers, highest score first, HTML removed.

An input is a site as the dump ships it (https://archive.org/details/stackexchange): its archive
(`beer.stackexchange.com.7z`, holding Posts.xml beside the site's other tables; a site split in tables,
`stackoverflow.com-Posts.7z`) or its `Posts.xml`, the site named by the archive or by the folder that
holds the file; a folder given is each such input in it. Only Posts.xml is read: a row per post,
`PostTypeId` 1 a question, 2 an answer (`ParentId` its question), `Score`, `Title`, `Body` (HTML,
escaped in the XML); other post types (tag wikis, …) are counted and passed over.

The XML is parsed by expat, streaming (a big site's Posts.xml is tens of GB), with no DTD entity at
all: a file that declares one (a "billion laughs", an `<!ENTITY x SYSTEM "file:///etc/passwd">`) is
refused with an UnsafeXML error (the input fails, nothing is expanded or fetched). A row over
`max_record_bytes` is cut out of the stream before the parser sees it, counted, and skipped.

Questions meet their answers by a hash join on the question id (answers come anywhere after their
question in the file, often years later): posts of up to `join_memory_bytes` of text are joined in
memory; past that, the posts are split by question id into 64 files on local disk, each joined the
same way (a grace hash join: memory bounded by the setting, disk about the XML's bytes per level of
split). Spark's shuffle would do the same work with every post through the JVM; a site is one input
and one task, its join in that task.
"""

from __future__ import annotations

import itertools
import pickle
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple
from xml.parsers import expat

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree

from curation import archives, storage
from curation.pipeline import Stage
from curation.settings import setting
from curation.sources import EXACT_DUPLICATES, Source

XML_BLOCK_BYTES = 1 << 20  # bytes read and parsed at a time
SPILL_FILES = 64  # the files a join that outgrows its memory splits its posts into, by question id
MAX_SPILL_DEPTH = 4  # splits of a split; then a file is joined in memory whatever its size (one huge question)
POST_OVERHEAD_BYTES = 200  # a held post's memory besides its text (the tuple, its ints, the dict entries)
SPLIT_TABLE = re.compile(r"^(?P<site>.+)-(?P<table>[A-Za-z]+)\.7z$")  # stackoverflow.com-Posts.7z
BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
TRAILING_SPACE = re.compile(r"[ \t]+$", re.M)


@dataclass(frozen=True)
class StackExchangeSettings:
    """Stack Exchange data dump: per-site archives (.7z) or Posts.xml files."""
    sites: list[str] = setting([], "sites to read, named as the dump names them (superuser.com, "
                               "beer.stackexchange.com); empty: the `largest_sites` largest of the inputs by bytes")
    largest_sites: int = setting(28, "with no `sites`: how many of the largest sites are read (LLaMA: 28)", minimum=1)
    min_answers: int = setting(0, "a question with fewer answers is dropped (too_few_answers); 0 keeps the "
                               "unanswered ones, as RedPajama did", minimum=0)
    max_record_bytes: int = setting(4 * 2**20, "a Posts.xml row larger than this, as stored, is counted and "
                                    "skipped (record_too_large)", minimum=1)
    max_member_bytes: int = setting(2**40, "an archive member declared larger than this is counted and skipped "
                                    "(member_too_large)", minimum=1)
    join_memory_bytes: int = setting(512 * 2**20, "text of the posts held to join questions to their answers; "
                                     "past it, the posts are split by question id into files on local disk",
                                     minimum=2**20)
    spill_directory: str | None = setting(None, "local folder for those files (null: the system's temporary one)")
    dedup: bool = setting(True, "drop a document whose text equals an earlier one's across the inputs (a site "
                          "given twice: exact_dedup)")


class UnsafeXML(ValueError):
    """An XML file that declares entities: refused before anything is expanded or fetched."""


class Post(NamedTuple):
    question_id: int  # its own id for a question, ParentId for an answer
    is_answer: bool
    id: int
    score: int
    title: str
    body: str  # HTML
    tags: str  # as stored: `<a><b>` (dumps to 2023) or `|a|b|` (later ones)


# ---- inputs and sites -------------------------------------------------------------------------------

def site_of(location: str) -> str:
    """The site an input holds: the archive's name less `.7z` (and `-Posts` for a site split in tables),
    or the name of the folder that holds a Posts.xml."""
    parts = location.rstrip("/").split("/")
    name = parts[-1]
    if name.lower().startswith("posts.xml") and len(parts) > 1:
        return parts[-2]
    split = SPLIT_TABLE.match(name)
    return split["site"] if split else name.removesuffix(".7z")


def site_inputs(location: str) -> list[str]:
    """A folder's site archives and Posts.xml files (a whole dump, or one site's folder); a file is itself."""
    if not storage.is_dir(location):
        return [location]
    return [path for path in storage.list_files(location, recursive=True)
            if path.endswith(".7z") or path.rsplit("/", 1)[-1].lower() in ("posts.xml", "posts.xml.gz")]


def left_out(sizes: dict[str, int], settings: StackExchangeSettings) -> dict[str, str]:
    """{input: reason} for the inputs not read: another table of a site split in tables, and the sites
    not chosen (`sites`, or all but the `largest_sites` largest by bytes)."""
    reasons, site_bytes = {}, Counter()
    for location, size in sizes.items():
        split = SPLIT_TABLE.match(location.rsplit("/", 1)[-1])
        if split and split["table"].lower() != "posts":
            reasons[location] = f"the {split['table']} table of {split['site']}: only Posts is read"
        else:
            site_bytes[site_of(location)] += size
    if settings.sites:
        chosen, why = set(settings.sites), "its site is not in stackexchange.sites"
    else:
        largest = sorted(site_bytes.items(), key=lambda item: (-item[1], item[0]))[:settings.largest_sites]
        chosen, why = {site for site, _ in largest}, f"not among the {settings.largest_sites} largest sites given"
    reasons.update({location: why for location in sizes if location not in reasons and site_of(location) not in chosen})
    return reasons


# ---- Posts.xml: rows, streaming, with no entity ------------------------------------------------------

def xml_blocks(stream: BinaryIO, max_record_bytes: int, counts: Counter) -> Iterator[bytes]:
    """The bytes of `stream`, in blocks that end before a `<`, less every piece between two `<` (a row,
    with the blank after it) longer than `max_record_bytes`: counted `record_too_large`, never held whole.
    A `<` only starts markup in XML (it is escaped in attribute values), so a piece is one row."""
    pending: list[bytes] = []  # the piece begun by the last `<` read (held while it is within the cap)
    pending_bytes, oversized = 0, False
    while chunk := stream.read(min(XML_BLOCK_BYTES, max_record_bytes)):
        first = chunk.find(b"<")
        if first == -1:
            pending_bytes += len(chunk)
            if not oversized and pending_bytes > max_record_bytes:
                _too_large(counts)
                pending, oversized = [], True
            elif not oversized:
                pending.append(chunk)
            continue
        last = chunk.rfind(b"<")
        if oversized or pending_bytes + first > max_record_bytes:
            if not oversized:
                _too_large(counts)
            block = chunk[first:last]  # the pieces inside a chunk are within the cap (a chunk is)
        else:
            block = b"".join(pending) + chunk[:last]
        if block:
            yield block
        pending, pending_bytes, oversized = [chunk[last:]], len(chunk) - last, False
    if not oversized and pending:
        yield b"".join(pending)


def _too_large(counts: Counter) -> None:
    """A record cut out: read (`in`) and dropped."""
    counts["in"] += 1
    counts["dropped.record_too_large"] += 1


def _refuse_entity(name, is_parameter, value, base, system_id, public_id, notation) -> None:
    declared = f"the external entity {name!r} (SYSTEM {system_id!r})" if system_id else f"the entity {name!r}"
    raise UnsafeXML(f"the XML declares {declared}: entity declarations are refused (an entity expansion bomb "
                    "such as a billion laughs, or an external entity reading a local file or URL)")


def xml_rows(stream: BinaryIO, max_record_bytes: int, counts: Counter) -> Iterator[dict[str, str]]:
    """The attributes of each `<row>` of a dump table, in file order; `in` counts them."""
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)  # no external DTD is read
    parser.EntityDeclHandler = _refuse_entity
    rows: list[dict[str, str]] = []
    parser.StartElementHandler = lambda tag, attributes: rows.append(attributes) if tag == "row" else None
    for block in xml_blocks(stream, max_record_bytes, counts):
        parser.Parse(block, False)
        counts["in"] += len(rows)
        yield from rows
        rows.clear()
    parser.Parse(b"", True)
    counts["in"] += len(rows)
    yield from rows


def as_post(row: dict[str, str], counts: Counter) -> Post | None:
    kind = row.get("PostTypeId")
    if kind not in ("1", "2"):
        counts["dropped.other_post_type"] += 1
        return None
    try:
        post_id, score = int(row["Id"]), int(row.get("Score") or 0)
        question_id = post_id if kind == "1" else int(row["ParentId"])
    except (KeyError, ValueError):
        counts["dropped.malformed_row"] += 1
        return None
    return Post(question_id, kind == "2", post_id, score, row.get("Title", ""), row.get("Body", ""),
                row.get("Tags", ""))


# ---- questions joined to their answers -------------------------------------------------------------

def joined(posts: Iterable[Post], counts: Counter) -> Iterator[tuple[Post, list[Post]]]:
    """(question, its answers) of posts held in memory, by question id; an answer whose question is not
    there (deleted, or not a question) is counted `orphan_answer`."""
    questions: dict[int, Post] = {}
    answers: dict[int, list[Post]] = defaultdict(list)
    for post in posts:
        if post.is_answer:
            answers[post.question_id].append(post)
        else:
            questions[post.id] = post
    orphans = sum(len(found) for qid, found in answers.items() if qid not in questions)
    if orphans:
        counts["dropped.orphan_answer"] += orphans
    for qid in sorted(questions):
        found = answers.get(qid, [])
        counts["answers"] += len(found)
        yield questions[qid], found


def joined_within(posts: Iterable[Post], memory_bytes: int, directory: str | None, counts: Counter,
                  depth: int = 0) -> Iterator[tuple[Post, list[Post]]]:
    """`joined`, holding posts of at most `memory_bytes` of text: past that, the posts (those held and the
    rest) are split by question id into SPILL_FILES files on local disk, each then joined the same way
    (a file still too large is split again by the next digits of the id, down to MAX_SPILL_DEPTH)."""
    posts, held, held_bytes = iter(posts), [], 0
    for post in posts:
        held.append(post)
        held_bytes += len(post.body) + len(post.title) + POST_OVERHEAD_BYTES
        if held_bytes > memory_bytes and depth < MAX_SPILL_DEPTH:
            yield from _joined_through_disk(itertools.chain(held, posts), memory_bytes, directory, counts, depth)
            return
    yield from joined(held, counts)


def _joined_through_disk(posts: Iterable[Post], memory_bytes: int, directory: str | None, counts: Counter,
                         depth: int) -> Iterator[tuple[Post, list[Post]]]:
    with tempfile.TemporaryDirectory(prefix="ccurate-stackexchange-", dir=directory) as spill, ExitStack() as files:
        outs = [files.enter_context(open(f"{spill}/{k}", "wb")) for k in range(SPILL_FILES)]
        for post in posts:
            pickle.dump(post, outs[post.question_id // SPILL_FILES ** depth % SPILL_FILES], pickle.HIGHEST_PROTOCOL)
        files.close()
        for k in range(SPILL_FILES):
            yield from joined_within(_unpickled(f"{spill}/{k}"), memory_bytes, spill, counts, depth + 1)


def _unpickled(path: str) -> Iterator[Post]:
    with open(path, "rb") as spilled:
        while True:
            try:
                yield pickle.load(spilled)
            except EOFError:
                return


def is_posts_table(name: str) -> bool:
    return name.rsplit("/", 1)[-1].lower() == "posts.xml"


def read_site(location: str, settings: StackExchangeSettings, counts: Counter) -> Iterator[dict]:
    """A site's questions, each with its answers (HTML yet, in `answers`, unsorted)."""
    site, found = site_of(location), False
    for member in archives.member_streams(location, settings.max_member_bytes, counts, wanted=is_posts_table):
        found = True
        rows = xml_rows(member.stream, settings.max_record_bytes, counts)
        posts = filter(None, (as_post(row, counts) for row in rows))
        for question, answers in joined_within(posts, settings.join_memory_bytes, settings.spill_directory, counts):
            yield {"site": site, "question_id": question.id, "url": f"https://{site}/questions/{question.id}",
                   "title": question.title, "score": question.score, "tags": tag_list(question.tags),
                   "question_html": question.body, "answers": answers}
    if not found:
        counts["dropped.no_posts_table"] += 1


def tag_list(tags: str) -> list[str]:
    return re.findall(r"<([^<>]+)>", tags) if tags.startswith("<") else [tag for tag in tags.split("|") if tag]


# ---- stages --------------------------------------------------------------------------------------

def post_text(html: str) -> str:
    """A post's HTML → text, with resiliparse as `curation.extract`, over the whole fragment: main-content
    extraction is for pages with boilerplate, and on posts it dropped 10 % or more of the text of 147 of
    beer.stackexchange.com's 2,354. Code in <pre> keeps its indentation, list items get bullets."""
    text = extract_plain_text(HTMLTree.parse(html), preserve_formatting=True, main_content=False,
                              list_bullets=True, alt_texts=False)
    return BLANK_LINES.sub("\n\n", TRAILING_SPACE.sub("", text)).strip()


class PostTextStage(Stage):
    """The question's and every answer's HTML → text."""
    name = "html_to_text"

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            try:
                doc["question_text"] = post_text(doc.pop("question_html"))
                doc["answers"] = [answer._replace(body=post_text(answer.body)) for answer in doc["answers"]]
            except Exception:  # resiliparse raises on markup it cannot parse at all
                self.drop("unparseable_html")
                continue
            yield doc


class AnswersByScoreStage(Stage):
    """One document per question: `Q: title`, the question, then each answer as `A: …`, highest score
    first (ties: the older answer first), blank lines between posts (RedPajama's layout, with blank lines)."""
    name = "answers_by_score"
    writes = ("raw_content", "answer_ids", "answer_scores")

    def __init__(self, settings: StackExchangeSettings):
        super().__init__()
        self.min_answers = settings.min_answers

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            answers = sorted(doc.pop("answers"), key=lambda answer: (-answer.score, answer.id))
            if len(answers) < self.min_answers:
                self.drop("too_few_answers")
                continue
            posts = [f"Q: {doc['title']}\n{doc.pop('question_text')}".strip()]
            posts += [f"A: {answer.body}" for answer in answers]
            doc["raw_content"] = "\n\n".join(posts)
            doc["answer_ids"] = [answer.id for answer in answers]
            doc["answer_scores"] = [answer.score for answer in answers]
            yield doc


def stages(settings: StackExchangeSettings) -> list[Stage]:
    return [PostTextStage(), AnswersByScoreStage(settings)]


def run_wide_steps(settings: StackExchangeSettings) -> list:
    return [EXACT_DUPLICATES] if settings.dedup else []


SOURCE = Source(name="stackexchange", settings=StackExchangeSettings, read=read_site, stages=stages,
                fields=("url", "title", "site", "question_id", "score", "tags", "answer_ids", "answer_scores"),
                inputs=site_inputs, left_out=left_out,
                run_wide=run_wide_steps)
