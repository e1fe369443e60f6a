"""LLaMA's mixture end to end on the shared data: each source's documents made here from the real files (a curate
run's curated/ from the 697 real WET documents, marked by the real language ID, C4 rules and a wikiref classifier
trained here; GitHub, Wikipedia, Books, ArXiv and Stack Exchange through their curation.sources readers and
stages), then `make mixture` and `make pretrain MIXTURE=…` as a user runs them."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from curation.c4 import C4Stage
from curation.langid import LanguageIdStage
from curation.pipeline import run_stages
from curation.settings import describe, load_settings
from curation.sources import load
from curation.warc import ArchiveReader
from curation.wikiref import WikirefSettings, WikirefStage, load_model, reference_probabilities
from jobs import train_wikiref
from jobs.mixture import run
from tests.test_trainer import REPO_ROOT, refused
from tokenizer.mixture import SOURCES, MixtureError, MixtureSettings, plan, sources
from trainer.config import TrainConfig
from trainer.data import TokenWindows, find_shards
from trainer.mixture import MixtureLoader, SourceCursor, assign_windows, source_seed
from trainer.pretrain import checkpoints, train, train_state
from trainer.report import COLUMNS, aligned

pytestmark = pytest.mark.usefixtures("torch_one_thread")

WET = "wet/CC-MAIN-2019-30-697-docs.warc.wet.gz"
TABLE_1 = {"commoncrawl": (0.67, 1.10), "c4": (0.15, 1.06), "github": (0.045, 0.64), "wikipedia": (0.045, 2.45),
           "books": (0.045, 2.23), "arxiv": (0.025, 1.06), "stackexchange": (0.02, 1.03)}
SOURCE_INPUTS = {"github": ["github/*.tar.gz"], "wikipedia": ["wikipedia/en/enwiki-pages-articles-sample.xml.bz2"],
                 "books": ["books/*.txt"], "arxiv": ["arxiv/emcee", "arxiv/celerite"],
                 "stackexchange": ["stackexchange/*/Posts.xml"]}


def curated_run(shared_data: Path, root: Path) -> Path:
    """RUN/curated/language=xx/bucket=all/ of the real WET documents, with language ID, C4's marks and wikiref
    marks from a classifier trained here; its threshold is the median score, so that wikiref_keep keeps half."""
    wet = str(shared_data / WET)
    articles = [str(p) for p in sorted((shared_data / "wikipedia" / "wikitext").glob("*.txt"))[:12]]
    train_wikiref.train(articles, [wet], root / "wikiref", allow_fallback=True, log=lambda message: None)
    pages = [p for p in ArchiveReader().read(wet) if len(p.get("raw_content") or "") >= 300]
    model = str(root / "wikiref" / "wikiref.bin")
    median = float(np.median(reference_probabilities(load_model(model), [p["raw_content"] for p in pages])))
    docs = list(run_stages(pages, [LanguageIdStage(), C4Stage(),
                                   WikirefStage(WikirefSettings(model=model, threshold=median))]))
    for language in sorted({d["language"] for d in docs}):
        part = [d for d in docs if d["language"] == language]
        folder = root / "run" / "curated" / f"language={language}" / "bucket=all"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({column: [d[column] for d in part] for column in
                                 ("url", "raw_content", "wikiref_score", "wikiref_keep", "c4_keep")}),
                       folder / "part-0.parquet")
    return root / "run" / "curated"


def source_documents(shared_data: Path, root: Path, name: str) -> Path:
    """DIR/documents/ of a source, as its job writes it: the documents of its reader and stages."""
    source = load(name)
    settings, counts, docs = source.settings(), Counter(), []
    for pattern in SOURCE_INPUTS[name]:
        for location in sorted(shared_data.glob(pattern)):
            docs += run_stages(source.read(str(location), settings, counts), source.stages(settings))
    folder = root / "sources" / name / "documents"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"raw_content": [d["raw_content"] for d in docs], "source": [name] * len(docs)}),
                   folder / "part-0.parquet")
    return folder


@pytest.fixture(scope="module")
def mixture_file(shared_data, tmp_path_factory) -> Path:
    """A mixture's settings over documents made from the shared data: Table 1's shares, a small tokenizer."""
    root = tmp_path_factory.mktemp("mixture")
    curated = curated_run(shared_data, root)
    overrides = {"output": str(root / "out"), "shards": {"val_fraction": 0.05},
                 "tokenizer": {"vocab_size": 1000, "max_chars": 1_000_000, "character_coverage": 0.9995},
                 "commoncrawl": {"documents": str(curated)}, "c4": {"documents": str(curated)},
                 **{name: {"documents": str(source_documents(shared_data, root, name))} for name in SOURCE_INPUTS}}
    path = root / "mixture.yaml"
    path.write_text(yaml.safe_dump(overrides))
    return path


def make(*arguments: str) -> str:
    """`make ARGUMENTS…` in the checkout, as a user runs it (one torch thread per process); its printed lines."""
    done = subprocess.run(["make", "--no-print-directory", *arguments], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def built(mixture_file) -> dict:
    """`make mixture MIXTURE=…`: its printed lines, its settings, and mixture.json."""
    printed = make("mixture", f"MIXTURE={mixture_file}")
    settings = load_settings(MixtureSettings, mixture_file)
    return {"printed": printed, "settings": settings,
            "mixture": json.loads((Path(settings.output) / "mixture.json").read_text())}


TINY = ["seq_len=32", "batch_size=8", "max_steps=8", "eval_interval=0", "eval_batches=1", "log_interval=4",
        "lr=0.003", "ckpt_interval=100"]


@pytest.fixture(scope="module")
def pretrained(built, mixture_file, tmp_path_factory) -> tuple[Path, str]:
    """`make pretrain MIXTURE=… NPROC=2`: the tiny preset, 2 DDP ranks of 8 windows each, 8 steps."""
    out = tmp_path_factory.mktemp("pretrain")
    return out, make("pretrain", f"MIXTURE={mixture_file}", "NPROC=2", f"ARGS=out_dir={out} {' '.join(TINY)}")


# --- the settings ---

def test_the_default_mixture_is_llamas_table_1_and_config_lists_every_setting():
    listing = subprocess.run([sys.executable, "-m", "jobs.mixture", "--print-settings"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout
    # Regenerate it when this fails: `python -m jobs.mixture --print-settings > config/mixture.yaml`.
    assert (REPO_ROOT / "config" / "mixture.yaml").read_text() == listing
    settings = load_settings(MixtureSettings, REPO_ROOT / "config" / "mixture.yaml")
    assert {name: (s.proportion, s.llama_epochs) for name, s in sources(settings).items()} == TABLE_1
    assert {name: s.keep for name, s in sources(settings).items() if s.keep} == {"commoncrawl": "wikiref_keep",
                                                                                  "c4": "c4_keep"}
    assert settings.commoncrawl.documents == settings.c4.documents == "runs/local/curated"
    assert settings.github.documents == "runs/sources/github/documents"
    changed = load_settings(MixtureSettings, None, ["github.proportion=0.1", "commoncrawl.proportion=0.615"])
    assert changed.github.documents == "runs/sources/github/documents" and changed.github.llama_epochs == 0.64
    assert describe(MixtureSettings) in listing


def test_shares_that_do_not_sum_to_one_or_a_missing_source_are_refused_before_any_work(tmp_path):
    assert "the proportions sum to 0.85, not 1: commoncrawl 0.52 + c4 0.15" in refused(
        "jobs.mixture", "commoncrawl.proportion=0.52")
    missing = refused("jobs.mixture", f"--output={tmp_path / 'out'}", f"commoncrawl.documents={tmp_path / 'none'}")
    assert f"commoncrawl: no documents at {tmp_path / 'none'} (made by `make classifier`, then `make curate`) (or " \
           "set missing=drop to leave it out)" in missing
    assert not (tmp_path / "out").exists()  # refused before Spark, nothing claimed
    bad = tmp_path / "bad.yaml"
    bad.write_text("github:\n  proportion: 0.5\n")
    assert f"mixture={bad}: the proportions sum to 1.455, not 1" in refused("trainer.train", f"mixture={bad}")
    assert "unknown setting nope" in refused("jobs.mixture", "nope=1")


def test_a_missing_source_is_an_error_or_dropped_with_its_share_spread_over_the_others():
    why = {"books": "no documents at runs/sources/books/documents (made by `make sources SOURCES=books`)"}
    with pytest.raises(MixtureError, match=r"books: no documents .*SOURCES=books`\) \(or set missing=drop"):
        plan(load_settings(MixtureSettings), why)
    shares, left_out = plan(load_settings(MixtureSettings, None, ["missing=drop"]), {**why, "arxiv": "none"})
    assert left_out == {**why, "arxiv": "none"} and list(shares) == [n for n in SOURCES if n not in left_out]
    assert sum(shares.values()) == pytest.approx(1)
    assert shares["commoncrawl"] == pytest.approx(0.67 / 0.93) and shares["c4"] == pytest.approx(0.15 / 0.93)


# --- the schedule ---

def test_every_window_goes_to_the_source_furthest_below_its_share():
    shares = np.array([share for share, _ in TABLE_1.values()])
    chosen = assign_windows(shares, np.zeros(len(shares)), 20_000)
    drawn = np.cumsum(np.eye(len(shares))[chosen], axis=0)
    assert np.abs(drawn - np.outer(np.arange(1, 20_001), shares)).max() < 1  # one window at every point
    counts, in_batches = np.zeros(len(shares), dtype=np.int64), []
    for _ in range(100):  # the same sequence, batch by batch: it does not depend on the batch size
        batch = assign_windows(shares, counts, 16)
        np.add.at(counts, batch, 1)
        in_batches += batch.tolist()
    assert in_batches == chosen[:1600].tolist()


def test_a_source_at_the_end_of_its_windows_starts_its_next_epoch_in_a_new_order(built):
    shards = find_shards(Path(built["settings"].output) / "shards" / "wikipedia", "train")
    windows = TokenWindows(shards, 2048)
    n = len(windows)
    cursor = SourceCursor(windows, source_seed(0, "wikipedia"))
    epochs = [[cursor.take() for _ in range(n)] for _ in range(3)]
    assert all(sorted(epoch) == list(range(n)) for epoch in epochs)  # each epoch visits every window once
    assert len({tuple(epoch) for epoch in epochs}) == 3  # in an order of its own
    assert (cursor.epoch, cursor.position, cursor.epochs) == (2, n, 3.0)
    cursor.take()
    assert (cursor.epoch, cursor.position) == (3, 1)


# --- make mixture, make pretrain MIXTURE=… ---

def test_make_mixture_builds_one_tokenizer_and_shards_per_source(built):
    mixture, settings = built["mixture"], built["settings"]
    assert list(mixture["sources"]) == list(SOURCES) and mixture["left_out"] == {}
    curated = pq.read_table(settings.commoncrawl.documents).to_pydict()
    assert mixture["sources"]["commoncrawl"]["selected_documents"] == sum(curated["wikiref_keep"]) > 0
    assert mixture["sources"]["c4"]["selected_documents"] == sum(curated["c4_keep"]) > 0
    assert sum(curated["wikiref_keep"]) < len(curated["wikiref_keep"])  # the filter took some out
    sha = bytes.fromhex(mixture["tokenizer"]["sha256"])
    for name, source in mixture["sources"].items():
        shards = find_shards(Path(settings.output) / "shards" / name, "train", sha)  # all of the one tokenizer
        assert sum(s.num_tokens for s in shards) == source["tokens"]["train"] > 0
        assert name in built["printed"]
    # The tokenizer's sample: each source up to max_chars × its share (whole documents, drawn by a seeded hash).
    sample = mixture["tokenizer"]["sample_characters"]
    assert sample["commoncrawl"] == pytest.approx(0.67 * settings.tokenizer.max_chars, rel=0.25)
    assert sample["commoncrawl"] > sample["c4"] > sample["stackexchange"] > 0



def test_a_rerun_of_make_mixture_makes_nothing_again(built, spark):
    settings, mixture = built["settings"], built["mixture"]
    made = [*Path(settings.output).rglob("*.bin"), *Path(settings.output).rglob("*.parquet"),
            Path(mixture["tokenizer"]["model"])]
    before = {path: path.stat().st_mtime_ns for path in made}
    assert run(spark, settings) == mixture
    assert {path: path.stat().st_mtime_ns for path in made} == before


def test_a_source_make_mixture_left_out_stays_out_of_training_and_is_said(built, mixture_file, tmp_path):
    output = Path(built["settings"].output)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "shards").symlink_to(output / "shards")
    mixture = json.loads((output / "mixture.json").read_text())
    del mixture["sources"]["books"]
    mixture["left_out"] = {"books": "no documents at runs/sources/books/documents (made by `make sources …`)"}
    (tmp_path / "out" / "mixture.json").write_text(json.dumps(mixture))  # as a build with missing=drop writes it
    settings = yaml.safe_load(mixture_file.read_text())
    (tmp_path / "mixture.yaml").write_text(yaml.safe_dump({**settings, "output": str(tmp_path / "out")}))
    loader = MixtureLoader(str(tmp_path / "mixture.yaml"), 32, 16)
    assert loader.left_out == mixture["left_out"] and "books" not in loader.names
    assert loader.shares["commoncrawl"] == pytest.approx(0.67 / 0.955)
    del mixture["sources"]["arxiv"]  # not built, not left out: a mixture to build again
    (tmp_path / "out" / "mixture.json").write_text(json.dumps(mixture))
    with pytest.raises(MixtureError, match="arxiv: no shards in .* builds them"):
        MixtureLoader(str(tmp_path / "mixture.yaml"), 32, 16)


def test_make_pretrain_draws_each_source_by_its_share(pretrained, built):
    out, printed = pretrained
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    drawn = [r["drawn"] for r in rows if "drawn" in r][-1]
    assert sum(drawn.values()) == 8 * 16  # 8 steps of 2 ranks × 8 windows
    for name, source in built["mixture"]["sources"].items():
        share = drawn[name] / 128
        print(f"{name}: planned {source['share']:.2%}, drawn {share:.2%}")
        assert abs(share - source["share"]) < 0.01
    assert "2 × cpu, DDP" in printed and "mixture at step 0:" in printed and "mixture at step 8:" in printed
    assert aligned(COLUMNS) in printed  # the table's header: source, train tokens, planned, drawn, epochs, …
    end = printed[printed.index("mixture at step 8:"):].splitlines()
    wikipedia = next(line for line in end if line.startswith("wikipedia")).split()
    assert wikipedia[3] == f"{drawn['wikipedia'] / 128:.2%}" and float(wikipedia[4]) > 0 and wikipedia[6] == "2.45"
    report = (out / "report.html").read_text()
    assert all(f"<td>{name}</td>" in report for name in SOURCES) and (out / "mixture.png").stat().st_size > 10_000
    state = train_state(checkpoints(out)[-1])["data"]["sources"]
    assert {name: s["drawn"] for name, s in state.items()} == drawn
    assert all({"epoch", "position", "shards"} <= set(s) for s in state.values())


def test_ddp_ranks_take_their_slices_of_the_batch_one_process_takes(pretrained, mixture_file, tmp_path):
    out, _ = pretrained
    ddp = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    cfg = load_settings(TrainConfig, REPO_ROOT / "trainer" / "configs" / "tiny.json",
                        [f"mixture={mixture_file}", f"out_dir={tmp_path}", *TINY, "batch_size=16"])
    assert train(cfg)["losses"] == pytest.approx(ddp, abs=1e-4)
    one = MixtureLoader(str(mixture_file), 32, 16, seed=3)
    ranks = [MixtureLoader(str(mixture_file), 32, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        assert torch.equal(one.next_batch()[0], torch.cat([rank.next_batch()[0] for rank in ranks]))


def test_a_stopped_and_resumed_run_draws_exactly_the_windows_of_an_unstopped_one(built, mixture_file, tmp_path):
    straight = MixtureLoader(str(mixture_file), 32, 16, seed=7)
    expected = [straight.next_batch()[0] for _ in range(12)]
    first = MixtureLoader(str(mixture_file), 32, 16, seed=7)
    drawn = [first.next_batch()[0] for _ in range(5)]
    state = json.loads(json.dumps(first.state_dict()))  # as the checkpoint's train_state.json holds it
    resumed = MixtureLoader(str(mixture_file), 32, 16, seed=7)
    resumed.load_state_dict(state)
    drawn += [resumed.next_batch()[0] for _ in range(7)]
    assert all(torch.equal(a, b) for a, b in zip(drawn, expected, strict=True))  # token ids, step by step
    with pytest.raises(ValueError, match="shares changed since the checkpoint"):
        resumed.load_state_dict({**state, "shares": {**state["shares"], "github": 0.1}})
    with pytest.raises(ValueError, match="trained on one shard folder"):
        resumed.load_state_dict({"seed": 7, "epoch": 0, "position": 0, "shards": []})

    def run(out, **more):
        return train(load_settings(TrainConfig, None, [f"mixture={mixture_file}", f"out_dir={out}", *TINY,
                                                       "max_steps=6", *(f"{k}={v}" for k, v in more.items())]))
    whole = run(tmp_path / "whole")["losses"]
    stopped = run(tmp_path / "resumed", stop_at=3)["losses"]
    assert stopped + run(tmp_path / "resumed")["losses"] == whole
