def test_local_spark_runs_python_workers_with_this_checkout(spark):
    # A Python UDF on the workers imports the project's own package.
    rdd = spark.sparkContext.parallelize(["  Héllo, Wörld！ 2019 ", "x"], 2)
    from curation.normalize import normalize_for_dedup

    assert rdd.map(lambda s: __import__("curation.normalize").normalize.normalize_for_dedup(s)).collect() == [
        normalize_for_dedup("  Héllo, Wörld！ 2019 "), "x"]
