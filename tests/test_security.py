"""A run exposes nothing: a local run listens on loopback only, its outputs keep the user's umask,
and no secret of an input's location (URL user-info, presigned-URL signature, token) is written to
the run directory or printed, while the real URL is what gets fetched."""

import base64
import html
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pyarrow.parquet as pq
import pytest

from curation.redact import is_secret_name, redact_config, redact_text
from jobs.spark import local_conf

from .conftest import REPO_ROOT
from .listening_sockets import is_loopback, processes_of_tree, sockets_of_tree

PASSWORD, SIG, TOK = "pw-Qx7e5ecr3t", "sig0a1b2c3d4e5f", "tok9z8y7x6w"
SECRETS = (PASSWORD, SIG, TOK)
QUERY = f"X-Amz-Signature={SIG}&X-Amz-Expires=3600&token={TOK}"
REDACTED_QUERY = "X-Amz-Signature=***&X-Amz-Expires=3600&token=***"


# ---- the redaction helper --------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("https://user:pa%40ss@mirror.example/crawl-data/x.warc.gz", "https://***@mirror.example/crawl-data/x.warc.gz"),
    ("https://TOKEN123@github.com/org/repo.git", "https://***@github.com/org/repo.git"),
    ("http://u:p@ss@host:8080/a?b=1", "http://***@host:8080/a?b=1"),
    ("https://bucket.s3.amazonaws.com/seg/x.warc.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261125"
     "&X-Amz-Date=20261125T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token=FQoG&X-Amz-SignedHeaders=host"
     "&X-Amz-Signature=abc123",
     "https://bucket.s3.amazonaws.com/seg/x.warc.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
     "&X-Amz-Date=20261125T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token=***&X-Amz-SignedHeaders=host"
     "&X-Amz-Signature=***"),
    ("https://bucket.s3.amazonaws.com/x?AWSAccessKeyId=AKIA&Expires=1&Signature=c2ln",
     "https://bucket.s3.amazonaws.com/x?AWSAccessKeyId=***&Expires=1&Signature=***"),
    ("https://storage.googleapis.com/b/o.gz?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa%40p.iam"
     "&X-Goog-Date=20261125T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host&X-Goog-Signature=9f8e",
     "https://storage.googleapis.com/b/o.gz?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=***"
     "&X-Goog-Date=20261125T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host&X-Goog-Signature=***"),
    ("https://acct.blob.core.windows.net/c/b?sv=2022-11-02&se=2026-12-01&sp=r&sig=AbC%3D",
     "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&se=2026-12-01&sp=r&sig=***"),
    ("https://api.example/v1?api_key=k1&apikey=k2&key=k3&access_token=t&page=2#id_token=j",
     "https://api.example/v1?api_key=***&apikey=***&key=***&access_token=***&page=2#id_token=***"),
    ("s3://bucket/key/segment.warc.gz", "s3://bucket/key/segment.warc.gz"),
    ("s3://AKIAX:wJalr%2FK7@bucket/x.gz", "s3://***@bucket/x.gz"),
    ("https://medium.com/@user/post", "https://medium.com/@user/post"),
    ("/data/CC-MAIN-2020-05/x.warc.gz", "/data/CC-MAIN-2020-05/x.warc.gz"),
    ("404 Client Error: Not Found for url: http://bob:hunter2@127.0.0.1:80/x.gz?token=abc. Retrying",
     "404 Client Error: Not Found for url: http://***@127.0.0.1:80/x.gz?token=***. Retrying"),
    ("Max retries exceeded with url: /x.warc.gz?X-Amz-Signature=abc (Caused by NewConnectionError)",
     "Max retries exceeded with url: /x.warc.gz?X-Amz-Signature=*** (Caused by NewConnectionError)"),
    ("['https://a:b@h/1', 'https://h/2?sig=s']", "['https://***@h/1', 'https://h/2?sig=***']"),
])
def test_redact_text(text, expected):
    assert redact_text(text) == expected
    assert redact_text(expected) == expected


def test_secret_names_and_settings():
    assert all(map(is_secret_name, ["password", "aws_secret_access_key", "sessionToken", "AWSAccessKeyId",
                                    "X-Amz-Security-Token", "api_key", "credentials", "db.pass"]))
    assert not any(map(is_secret_name, ["tokens", "num_tokens", "keep", "monkey", "base_url", "signed_headers",
                                        "signature_seconds", "X-Amz-SignedHeaders", "token_budget", "key_file"]))
    config = {"input": {"base_url": "https://u:p@m/", "api_key": "k", "token": None, "paths": ["s3://b/k?sig=s"]},
              "minhash": {"keep": "perplexity", "threshold": 0.8}, "auth": {"user": "u", "password": "p"}}
    assert redact_config(config) == {
        "input": {"base_url": "https://***@m/", "api_key": "***", "token": None, "paths": ["s3://b/k?sig=***"]},
        "minhash": {"keep": "perplexity", "threshold": 0.8}, "auth": "***"}


def test_logs_and_uncaught_errors_are_redacted():
    script = ("import logging, os\nfrom curation.redact import install_redaction\ninstall_redaction()\n"
              "password, sig, token = os.environ['SECRETS'].split()\n"
              "logging.getLogger('x').warning('%s: retrying', f'http://u:{password}@h/x?token={token}')\n"
              "logging.getLogger('x').warning('%s %s: malformed', f'http://u:{password}@h/')\n"
              "try:\n    raise OSError(f'cannot open http://h/x?X-Amz-Signature={sig}')\n"
              "except OSError:\n    logging.getLogger('x').exception('failed')\n"
              "raise ValueError(f'fatal: https://u:{password}@h/')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "SECRETS": " ".join(SECRETS)})
    assert result.returncode == 1
    assert "http://***@h/x?token=***: retrying" in result.stderr
    assert "OSError: cannot open http://h/x?X-Amz-Signature=***" in result.stderr
    assert "ValueError: fatal: https://***@h/" in result.stderr
    assert "%s %s: malformed (arguments: ('http://***@h/',))" in result.stderr
    assert not [secret for secret in SECRETS if secret in result.stderr]


def test_local_spark_settings(monkeypatch):
    monkeypatch.delenv("CCURATE_SPARK_UI", raising=False)
    conf = local_conf(Path("spark.log"))
    assert conf["spark.driver.host"] == conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert conf["spark.ui.enabled"] == "false" and conf["spark.ui.killEnabled"] == "false"
    monkeypatch.setenv("CCURATE_SPARK_UI", "1")
    assert local_conf(Path("spark.log"))["spark.ui.enabled"] == "true"


def test_spark_redacts_secret_confs(spark):
    """Spark's own redaction (UI, event log, logged environment) hides every conf we could set
    with a secret: checked with the JVM's regex engine on the session's setting."""
    pattern = spark.sparkContext._jvm.java.util.regex.Pattern.compile(
        spark.sparkContext.getConf().get("spark.redaction.regex"))
    for name in ["spark.hadoop.fs.s3a.secret.key", "spark.hadoop.fs.s3a.access.key", "spark.s3a.session.token",
                 "spark.ssl.keyPassword", "spark.x.api_key", "spark.gcs.credentials", "spark.url.signature"]:
        assert pattern.matcher(name).find(), name
    assert not pattern.matcher("spark.sql.shuffle.partitions").find()


# ---- a local HTTP server that wants the real URL ---------------------------------------------

class AuthHandler(BaseHTTPRequestHandler):
    """Serves `files` only to a request with user:PASSWORD and the signed query; the first request
    of each path answers 503 (as CommonCrawl does under load), `missing.warc.gz` 404, and the
    snapshot listing 500 then a dropped connection."""

    files: dict
    seen: Counter

    def do_GET(self):
        url = urlsplit(self.path)
        self.seen[url.path] += 1
        if url.path.endswith("warc.paths.gz"):
            if self.seen[url.path] == 1:
                return self.send_error(500)
            self.close_connection = True  # drop it: no answer at all
            return
        expected = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()
        query = parse_qs(url.query)
        if self.headers.get("Authorization") != expected or query.get("X-Amz-Signature") != [SIG] \
                or query.get("token") != [TOK]:
            return self.send_error(403)
        if self.seen[url.path] == 1:
            return self.send_error(503, "Slow Down")
        body = self.files.get(url.path)
        if body is None:
            return self.send_error(404)
        self.seen["served " + url.path] += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(shared_data):
    handler = type("Handler", (AuthHandler,), {"seen": Counter(), "files": {
        "/seg/good.warc.gz": (shared_data / "warc/CC-MAIN-2020-34-excerpt.warc.gz").read_bytes()}})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(port=httpd.server_address[1], seen=handler.seen)
    httpd.shutdown()
    httpd.server_close()


# ---- one `python -m jobs.curate` run (what `make curate` runs), watched while it runs ---------

@pytest.fixture(scope="module")
def secret_run(server, tmp_path_factory):
    """Curates a good URL and a missing one, both with user-info and a signed query, with the web
    UI on (the most a local run opens) and umask 077, polling the run's listening sockets and its
    JVM; Spark's local directory is the test's own."""
    work = tmp_path_factory.mktemp("secret-run")
    base = f"http://user:{PASSWORD}@127.0.0.1:{server.port}/seg"
    good, missing = f"{base}/good.warc.gz?{QUERY}", f"{base}/missing.warc.gz?{QUERY}"
    spark_files = work / "spark-local"
    spark_files.mkdir()
    env = {**os.environ, "CCURATE_SPARK_UI": "1", "SPARK_DRIVER_MEMORY": "1g", "SPARK_LOCAL_DIRS": str(spark_files)}
    with open(work / "stdout", "w") as out, open(work / "stderr", "w") as err:
        job = subprocess.Popen(
            [sys.executable, "-m", "jobs.curate", "--output", str(work / "run"), "--master", "local[2]",
             "run.max_failed_share=0.5", "line_dedup.enabled=false", "minhash.enabled=false", "--input", good, missing],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=err, preexec_fn=lambda: os.umask(0o077))
        sockets: set = set()
        jvms: set = set()
        while job.poll() is None:
            sockets |= sockets_of_tree(job.pid)
            jvms |= processes_of_tree(job.pid, "java")
            time.sleep(0.25)
    return SimpleNamespace(returncode=job.returncode, run=work / "run", sockets=sockets, jvms=jvms,
                           spark_files=spark_files,
                           stdout=(work / "stdout").read_text(), stderr=(work / "stderr").read_text(),
                           missing=f"http://***@127.0.0.1:{server.port}/seg/missing.warc.gz?{REDACTED_QUERY}")


def test_a_local_run_listens_on_loopback_only(secret_run):
    assert secret_run.returncode == 0, secret_run.stderr[-3000:]
    programs = {program for program, _, _ in secret_run.sockets}
    assert "java" in programs, secret_run.sockets  # the JVM's servers were seen: the check is not vacuous
    assert len([s for s in secret_run.sockets if s[0] == "java"]) >= 3  # RPC, block manager, UI, Py4J…
    exposed = {s for s in secret_run.sockets if not is_loopback(s[1])}
    assert not exposed, f"listening beyond loopback: {exposed}"
    log = (secret_run.run / "logs" / "spark.log").read_text()
    assert set(re.findall(r"Start Jetty (\S+):\d+ for SparkUI", log)) == {"127.0.0.1"}
    ui = re.search(r"Successfully started service 'SparkUI' on port (\d+)", log)  # 4040, or the next free one
    assert ui and any(port == int(ui[1]) for _, _, port in secret_run.sockets)  # the UI was on, and seen


def test_a_local_run_ends_quietly_and_leaves_nothing_running(secret_run):
    """What a user sees of `python -m jobs.curate`: progress and our own lines (the failed input's one
    line among them), no traceback, no Java stack trace; when it has ended, its JVM has too, and
    Spark's files are gone; stats.json holds numbers, not `***` (no secret is a statistic)."""
    assert secret_run.returncode == 0, secret_run.stderr[-3000:]
    for console in (secret_run.stderr, secret_run.stdout):
        assert "Traceback" not in console and "Exception" not in console and "\tat " not in console, console
    deadline = time.monotonic() + 30  # the JVM exits when it reads the end of its stdin, the driver's end
    while time.monotonic() < deadline and [pid for pid in secret_run.jvms if os.path.exists(f"/proc/{pid}")]:
        time.sleep(0.1)
    assert secret_run.jvms and not [pid for pid in secret_run.jvms if os.path.exists(f"/proc/{pid}")]
    assert secret_run.spark_files.is_dir() and not list(secret_run.spark_files.iterdir())
    assert "curated " in secret_run.stdout and "report:" in secret_run.stdout
    assert "***" not in (secret_run.run / "stats.json").read_text().replace(secret_run.missing, "")


def test_a_run_fetches_the_real_url_and_writes_no_secret(secret_run, server):
    assert secret_run.returncode == 0, secret_run.stderr[-3000:]
    assert server.seen["served /seg/good.warc.gz"] == 1  # with the password and the signed query
    stats = json.loads((secret_run.run / "stats.json").read_text())
    assert stats["documents_out"] > 0 and stats["segments_done"] == 1
    files = [path for path in secret_run.run.rglob("*") if path.is_file()]
    assert any(path.name == "spark.log" for path in files) and any(path.suffix == ".parquet" for path in files)
    for path in files:
        text = path.read_bytes().decode("latin-1")
        if path.suffix == ".parquet":  # compressed pages: look at the values and the metadata too
            table = pq.read_table(path)
            text += str(table.to_pylist()) + str(table.schema.metadata)
        assert not [secret for secret in SECRETS if secret in text], path
    for console in (secret_run.stdout, secret_run.stderr):
        assert not [secret for secret in SECRETS if secret in console]
    config = json.loads((secret_run.run / "config.json").read_text())
    assert config["inputs"][0].startswith(f"http://***@127.0.0.1:{server.port}/seg/good.warc.gz?X-Amz-Signature=***")


def test_a_failed_download_is_reported_by_its_redacted_url(secret_run, server):
    assert server.seen["/seg/missing.warc.gz"] == 2  # the 503, then the 404 to an authorised request
    manifest = json.loads((secret_run.run / "manifest.json").read_text())
    failed = [segment for segment in manifest["segments"] if segment["state"] == "failed"]
    assert [segment["source"] for segment in failed] == [secret_run.missing]
    assert "404" in failed[0]["error"] and secret_run.missing in failed[0]["error"]
    assert f"FAILED {secret_run.missing}: HTTPError: 404 Client Error" in secret_run.stdout
    assert "***" in secret_run.stderr  # the worker's retry warning and traceback, redacted
    assert html.escape(secret_run.missing) in (secret_run.run / "report.html").read_text()


def test_outputs_keep_the_users_umask(secret_run):
    loose = [(str(path), oct(path.stat().st_mode & 0o777)) for path in [secret_run.run, *secret_run.run.rglob("*")]
             if path.stat().st_mode & 0o077]
    assert not loose


def test_an_unreachable_listing_fails_with_a_redacted_error(server, tmp_path):
    """The CLI's own error, before Spark starts: a 500, then a dropped connection."""
    base = f"http://user:{PASSWORD}@127.0.0.1:{server.port}"
    result = subprocess.run(
        [sys.executable, "-m", "jobs.curate", "--output", str(tmp_path / "run"), "input.snapshot=2020-05",
         f"input.base_url={base}", "input.retries=1", "input.backoff_seconds=0.05"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    listing = f"http://***@127.0.0.1:{server.port}/crawl-data/CC-MAIN-2020-05/warc.paths.gz"
    assert result.returncode == 2
    assert f"{listing}: HTTP 500, retrying" in result.stderr
    assert f"error: {listing}: gave up after 2 tries (ConnectionError" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr and not (tmp_path / "run").exists()
