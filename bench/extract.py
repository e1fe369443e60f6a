"""Extraction throughput: WARC pages → text with our reader + ExtractStage, and bare resiliparse
(parse + extract_plain_text) on the same HTML already in memory.

Input: the 115 real HTML pages of ../shared/data/warc (CC excerpt + trafilatura pages), read
from disk 10 times for our path, and the same HTML bytes 10 times for the bare path."""



from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree

from bench.common import SHARED_DATA, report, timed
from curation.extract import ExtractStage, decode_html
from curation.pipeline import run_stages
from curation.warc import ArchiveReader

FILES = [SHARED_DATA / "warc" / name for name in
         ("CC-MAIN-2020-34-excerpt.warc.gz", "web-pages-00000.warc.gz", "web-pages-00001.warc.gz")]
REPEAT = 10


def main() -> None:
    pages = [page for path in FILES for page in ArchiveReader().read(str(path))]
    html = [decode_html(page["html"], page["http_charset"]) for page in pages] * REPEAT

    def ours():
        for _ in range(REPEAT):
            for path in FILES:
                for _ in run_stages(ArchiveReader().read(str(path)), [ExtractStage()]):
                    pass

    def bare():
        for text in html:
            extract_plain_text(HTMLTree.parse(text), preserve_formatting=True, main_content=True)

    mine, raw = timed(ours), timed(bare)
    report("read + extract (from WARC files)", len(html), "pages", mine, raw, "bare resiliparse on decoded HTML")


if __name__ == "__main__":
    main()
