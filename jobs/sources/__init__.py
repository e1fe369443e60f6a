"""LLaMA's non-web sources on Spark: one job per source, `python -m jobs.sources.NAME --input PATH…
--output DIR`, each a few lines over the engine (`jobs.sources.engine`) and the source's declaration
(`curation.sources.NAME.SOURCE`, no Spark).

How a source plugs in: declare `SOURCE = Source(...)` in `curation/sources/NAME.py` (its reader,
stages, settings and fields; optionally `inputs`, `left_out` and `run_wide`: see
`curation.sources`), add its fields to `curation.schema.SOURCE_FIELDS`, and add
`jobs/sources/NAME.py` as `jobs/sources/stackexchange.py` is: it calls `engine.main(SOURCE)`.
Its tasks find the source again by name (`curation.sources.load`).
"""
