"""C4 rules throughput: our C4Stage vs a bare loop calling the same rule function (`C4Rules.apply`) on the
same texts, so the ratio is the cost of the Stage machinery (counting, signals into the document, stats).

Input: the 513 documents of the real 697-document WET file that pass the 300-character floor and language
ID (>= 0.5), repeated 40 times (20,520 documents, ≈100 M characters); the stage annotates (filter=false),
so the same documents can be run again. CPU time, best of 3.

    .venv/bin/python -m bench.c4
"""

import time

from bench.common import SHARED_DATA, report, timed
from curation.c4 import C4Rules, C4Settings, C4Stage
from curation.extract import ExtractStage
from curation.langid import LanguageIdStage
from curation.warc import ArchiveReader

REPEAT = 40


def main() -> None:
    source = str(SHARED_DATA / "wet/CC-MAIN-2019-30-697-docs.warc.wet.gz")
    docs = list(LanguageIdStage()(ExtractStage()(ArchiveReader().read(source)))) * REPEAT
    docs = [dict(doc) for doc in docs]
    pairs = [(doc["raw_content"], doc["language"]) for doc in docs]
    settings = C4Settings()
    print(f"{len(docs)} documents, {sum(len(text) for text, _ in pairs) / 1e6:.0f} M characters")

    def bare_loop():
        rules = C4Rules(settings)
        for text, language in pairs:
            rules.apply(text, language)

    def stage():
        for _ in C4Stage(settings)(docs):
            pass

    raw = timed(bare_loop, clock=time.process_time)
    ours = timed(stage, clock=time.process_time)
    report("c4 stage", len(docs), "docs", ours, raw, "bare loop of C4Rules.apply")


if __name__ == "__main__":
    main()
