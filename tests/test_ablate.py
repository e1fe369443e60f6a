"""A reduced ablation (two arms, one seed, a few steps) end to end on real documents, real KenLM and
wikiref models, with the checks that the evaluation sets are disjoint from every arm and from the
models' training text."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import fasttext
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from curation.model_paths import LM_DIR, WIKIREF_DIR
from curation.report import write_report
from curation.warc import ArchiveReader
from curation.wikipedia import read_articles, read_wikitext
from curation.wikiref import reference_probabilities
from jobs import train_lm, train_wikiref
from tests.test_trainer import REPO_ROOT, printed_settings, refused
from tokenizer.shards import ShardReader
from trainer.ablate import main, parse_config
from trainer.ablation import paragraph_hashes

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def models(shared_data, tmp_path_factory):
    """A KenLM model (en) on the enwiki sample and a wikiref classifier on a few wikitext articles."""
    root = tmp_path_factory.mktemp("models")
    wiki = shared_data / "wikipedia"
    train_lm.train_language("en", [str(wiki / "en" / "enwiki-pages-articles-sample.xml.bz2")], root / "lm",
                            vocab_size=2000, order=3)
    articles = [str(p) for p in sorted((wiki / "wikitext").glob("*.txt"))[:12]]
    train_wikiref.train(articles, [str(shared_data / "wet" / "CC-MAIN-2019-30-697-docs.warc.wet.gz")],
                        root / "wikiref", allow_fallback=True, log=lambda message: None)
    return root / "lm", root / "wikiref"


@pytest.fixture(scope="module")
def run_dir(shared_data, models, tmp_path_factory):
    """A curate-run layout from the 697 real WET documents: segments/ (phase 1) and curated/
    partitioned language=/bucket= (alternate documents in head and tail), scored by the real classifier."""
    root = tmp_path_factory.mktemp("run")
    pages = list(ArchiveReader().read(str(shared_data / "wet" / "CC-MAIN-2019-30-697-docs.warc.wet.gz")))
    pages = [p for p in pages if len(p.get("raw_content") or "") >= 300]
    (root / "segments").mkdir()
    pq.write_table(pa.table({"url": [p["url"] for p in pages], "raw_content": [p["raw_content"] for p in pages]}),
                   root / "segments" / "seg-0.parquet")
    (root / "segments" / "seg-0.json").write_text(json.dumps({"documents": len(pages)}))  # as a run's sidecar
    model = fasttext.load_model(str(models[1] / "wikiref.bin"))
    for b, bucket in enumerate(("head", "tail")):
        part = pages[b::2]
        directory = root / "curated" / "language=en" / f"bucket={bucket}"
        directory.mkdir(parents=True)
        texts = [p["raw_content"] for p in part]
        pq.write_table(pa.table({"url": [p["url"] for p in part], "raw_content": texts,
                                 "wikiref_score": reference_probabilities(model, texts)}),
                       directory / "part-0.parquet")
    return root


def test_reduced_ablation(shared_data, models, run_dir, tmp_path):
    lm_dir, wikiref_dir = models
    wiki = shared_data / "wikipedia" / "en"
    held_out, trained = str(wiki / "wikitext2-test.tokens.txt"), str(wiki / "enwiki-pages-articles-sample.xml.bz2")
    out = tmp_path / "ablate"
    # Through the command line, as `make ablate` runs it. The enwiki sample trained the KenLM model: passed
    # as evaluation text too, its articles must be refused.
    main(["--run", str(run_dir), "--output", str(out), "--lm", str(lm_dir), "--wikiref", str(wikiref_dir),
          "--wikipedia", held_out, "--wikipedia", trained, "arms=[head,raw]", "seeds=[0]", "max_steps=4",
          "batch_size=4", "seq_len=64", "vocab_size=1000", "character_coverage=0.98", "eval_tokens=4096",
          "raw_heldout_fraction=0.1", "eval_batches=1"])

    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["arms"] == ["head", "raw"] and saved["settings"]["max_steps"] == 4
    assert set(saved["arms"]) == {"head", "raw"} and set(saved["summary"]) == {"head", "raw"}
    for name, arm in saved["arms"].items():
        assert arm["tokens"] == saved["token_budget"] > 0 and not arm["short"]
        assert ShardReader(out / "arms" / name / "train-00000").num_tokens == arm["tokens"]
        (run,) = arm["runs"]
        assert run["seed"] == 0 and run["steps"] == 4 and math.isfinite(run["final_train_loss"])
        for eval_set in ("wikipedia", "raw"):
            loss, bpb = run["eval"][eval_set]["loss"], run["eval"][eval_set]["bpb"]
            assert 0 < loss < 10 and 0 < bpb < 20
    assert (out / "ablate.png").stat().st_size > 0 and "| head |" in (out / "results.md").read_text()
    # report.html of a run shows RUN/ablate when it is there.
    report_run = tmp_path / "report-run"
    shutil.copytree(out, report_run / "ablate", ignore=shutil.ignore_patterns("models", "arms", "eval"))
    (report_run / "stats.json").write_text("{}")
    page = Path(write_report(report_run)).read_text()
    assert "Ablation" in page and 'src="ablate/ablate.png"' in page and "<td>head</td>" in page

    # The held-out raw documents are out of every arm, by URL and by text.
    raw_eval = set(saved["eval_sets"]["raw"]["urls"])
    segments = pq.read_table(run_dir / "segments" / "seg-0.parquet").to_pydict()
    texts_by_url = dict(zip(segments["url"], segments["raw_content"]))
    assert raw_eval and raw_eval <= set(texts_by_url)
    eval_texts = {texts_by_url[u] for u in raw_eval}
    for name in saved["arms"]:
        arm_urls = set((out / "arms" / name / "urls.txt").read_text().split())
        assert arm_urls and not arm_urls & raw_eval
        assert not {texts_by_url[u] for u in arm_urls if u in texts_by_url} & eval_texts

    # The Wikipedia set: none of its articles was read by the KenLM or classifier training.
    check = saved["eval_sets"]["wikipedia"]["check"]
    assert check["dropped_title_trained"] >= 2  # the enwiki sample's articles
    lm_sources = json.loads((lm_dir / "manifest.json").read_text())["languages"]["en"]["sources"]
    wikiref_sources = json.loads((wikiref_dir / "manifest.json").read_text())["inputs"]["wikipedia"]
    trained_titles = {a.title for s in lm_sources for a in read_articles(s)}
    trained_titles |= {a.title for a in read_wikitext(wikiref_sources)}
    trained_paragraphs = set().union(*(paragraph_hashes(a.text) for s in lm_sources + wikiref_sources
                                       for a in read_articles(s)))
    eval_urls = saved["eval_sets"]["wikipedia"]["urls"]
    assert eval_urls and all(url.startswith(f"wikipedia:{held_out}#") for url in eval_urls)
    evaluated = {url.split("#", 1)[1] for url in eval_urls}
    assert not evaluated & trained_titles
    held_out_articles = [a for a in read_articles(held_out) if a.title in evaluated]
    assert not set().union(*(paragraph_hashes(a.text) for a in held_out_articles)) & trained_paragraphs



def test_arms_from_the_command_line_as_make_ablate_passes_them():
    """README's `make ablate … ARGS='arms=[head,tail] max_steps=600'`: make's shell hands the command
    `arms=[head,tail]`, which is the list of two arms (it once became the arms '[', 'h', 'e', …)."""
    cfg = parse_config(["--run", "r", "--output", "o", "--wikipedia", "a", "--wikipedia", "b", "arms=[head,tail]",
                        "max_steps=600", "seeds=[0]"])
    assert (cfg.arms, cfg.max_steps, cfg.seeds, cfg.wikipedia) == (["head", "tail"], 600, [0], ["a", "b"])
    assert (cfg.run, cfg.output, cfg.lm, cfg.wikiref) == ("r", "o", LM_DIR, WIKIREF_DIR)  # model_paths' defaults
    made = subprocess.run(["make", "--no-print-directory", "-s", "ablate", "RUN=r",
                           "ARGS=arms=[head,tail] max_steps=600 --print-settings"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    shown = yaml.safe_load(made.stdout)
    assert (shown["arms"], shown["max_steps"]) == (["head", "tail"], 600)
    assert (shown["run"], shown["output"]) == ("r", "r/ablate")
    assert shown["wikipedia"][0].endswith("wikitext2-test.tokens.txt") and shown["lm"] == LM_DIR


def test_ablate_command_refuses_a_bad_value_before_torch_and_prints_its_settings():
    assert refused("trainer.ablate", "--run", "r", "arms=[head,nope]") == \
        "error: arms='nope': expected one of head, middle, tail, wikiref, curated, c4, raw"
    assert refused("trainer.ablate", "--run", "r", "--output", "o") == "error: --wikipedia (wikipedia) is required"
    assert "raw_heldout_fraction=2.0: expected a value in [0, 1]" in refused("trainer.ablate", "raw_heldout_fraction=2")
    shown = printed_settings("trainer.ablate", "--wikipedia", "w.txt", "seeds=[3]", "arms=head")
    assert (shown["seeds"], shown["arms"], shown["wikipedia"], shown["run"]) == ([3], ["head"], ["w.txt"], None)
