"""Language ID throughput: our LanguageIdStage vs a bare fastText `predict` loop on the same texts.

Input: the 554 documents of the real 697-document WET file that pass the 300-character floor,
repeated 20 times (≈11k documents, ≈40 M characters)."""



from bench.common import SHARED_DATA, report, timed
from curation.extract import ExtractStage
from curation.langid import BATCH_SIZE, LanguageIdStage, default_model_path, load_model
from curation.warc import ArchiveReader

REPEAT = 20


def main() -> None:
    docs = list(ExtractStage()(ArchiveReader().read(str(SHARED_DATA / "wet/CC-MAIN-2019-30-697-docs.warc.wet.gz"))))
    texts = [doc["raw_content"] for doc in docs] * REPEAT
    model = load_model(str(default_model_path()))

    def raw_loop():
        for start in range(0, len(texts), BATCH_SIZE):
            model.predict([t.replace("\n", "") for t in texts[start:start + BATCH_SIZE]], k=1)

    def ours():
        stage = LanguageIdStage()
        for _ in stage({"raw_content": text} for text in texts):
            pass

    raw = timed(raw_loop)
    mine = timed(ours)
    report("langid stage", len(texts), "docs", mine, raw, "bare fastText predict")


if __name__ == "__main__":
    main()
