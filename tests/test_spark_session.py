def test_local_spark_runs_python_workers_with_this_checkout(spark):
    # A Python UDF on the workers imports the project's own package.
    rdd = spark.sparkContext.parallelize(["  Héllo, Wörld！ 2019 ", "x"], 2)
    from curation.normalize import normalize_for_dedup

    assert rdd.map(lambda s: __import__("curation.normalize").normalize.normalize_for_dedup(s)).collect() == [
        normalize_for_dedup("  Héllo, Wörld！ 2019 "), "x"]


def test_local_python_workers_import_the_installed_pyspark_not_sparks_zip(spark):
    # Spark puts its zip of pyspark's sources first on the workers' path; jobs.worker_daemon puts the
    # installed package (the same code, compiled once) ahead of it. Both zips stay on the path.
    import pyspark

    def worker_pyspark(_):
        import sys

        import pyspark
        return pyspark.__file__, [entry for entry in sys.path if entry.endswith(".zip")]

    for location, zips in spark.sparkContext.parallelize([0, 1], 2).map(worker_pyspark).collect():
        assert location == pyspark.__file__ and ".zip" not in location
        assert any(entry.endswith("pyspark.zip") for entry in zips)
