"""Typed settings, the document schema and stage timing: one place for each rule."""

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation import schema
from curation.model_paths import LM_DIR, WIKIREF_MODEL
from curation.pipeline import Stage, run_stages
from curation.settings import SettingsError, load_settings, parse_command, part_of, setting
from jobs.curate import ANNOTATED, CurateSettings
from jobs.dedup import DedupSettings

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_defaults_live_in_the_stage_modules_and_config_file_is_their_listing():
    settings = load_settings(CurateSettings)
    assert settings.extract.min_length == 300 and settings.langid.threshold == 0.5
    assert settings.wikiref.threshold == 0.25 and settings.minhash.num_perm == 128
    environment = {name: value for name, value in os.environ.items() if name != "CCURATE_MODELS"}  # the defaults
    listing = subprocess.run([sys.executable, "-m", "jobs.curate", "--print-settings"], cwd=REPO_ROOT, env=environment,
                             capture_output=True, text=True, check=True).stdout
    # Regenerate it when this fails: `python -m jobs.curate --print-settings > config/curate.yaml`.
    assert (REPO_ROOT / "config" / "curate.yaml").read_text() == listing
    assert load_settings(CurateSettings, REPO_ROOT / "config" / "curate.yaml", [
        f"perplexity.models={LM_DIR}", f"wikiref.model={WIKIREF_MODEL}"]) == settings


def test_yaml_file_and_overrides_are_typed(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("langid:\n  threshold: 0.6\nminhash:\n  keep: id\ninput:\n  paths: a.warc.gz\n")
    settings = load_settings(CurateSettings, config, ["input.segments=10", "minhash.threshold=0.9"])
    assert settings.langid.threshold == 0.6 and settings.minhash.keep == "id"
    assert settings.input.paths == ["a.warc.gz"] and settings.input.segments == "10"
    assert settings.minhash.threshold == 0.9 and settings.minhash.ngram == 5
    assert load_settings(DedupSettings, None, ["extract.min_length=200"]).extract.min_length == 200


@pytest.mark.parametrize("override, message", [
    ("langid.threshold=abc", "langid.threshold='abc': expected a number"),
    ("langid.threshold=1.5", "langid.threshold=1.5: expected a value in [0, 1]"),
    ("minhash.keep=random", "minhash.keep='random': expected one of perplexity, id"),
    ("input.retries=abc", "input.retries='abc': expected an integer"),
    ("input.retries=2.5", "input.retries=2.5: expected an integer"),
    ("line_dedup.enabled=maybe", "line_dedup.enabled='maybe': expected true or false"),
    ("langid.treshold=0.6", "unknown setting langid.treshold"),
    ("nosuch.key=1", "unknown setting nosuch"),
    ("langid=3", "langid: a section, expected a mapping"),
    ("langid.threshold", "expected KEY=VALUE"),
    ("langid.threshold=[1", "langid.threshold: expected ',' or ']'"),
])
def test_a_wrong_value_is_named(override, message):
    with pytest.raises(SettingsError) as error:
        load_settings(CurateSettings, None, [override])
    assert message in str(error.value)


def test_job_refuses_bad_settings_with_exit_2_before_spark(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("langid: [unclosed\n")
    for args in (["langid.threshold=abc"], ["minhash.keep=random"], ["input.retries=abc"], ["--config", str(broken)]):
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "jobs.curate", "--output", str(tmp_path / "run"), *args],
                                cwd=REPO_ROOT, capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 3
        assert time.monotonic() - started < 20 and not (tmp_path / "run").exists()  # no Spark, nothing written
    for bad, message in (("minhash.num_perm=many", "minhash.num_perm='many': expected an integer"),
                         ("steps=[lines,fuzzy]", "steps='fuzzy': expected one of lines, minhash")):
        started = time.monotonic()
        dedup = subprocess.run([sys.executable, "-m", "jobs.dedup", "--input", "x", "--output", str(tmp_path / "d"),
                                bad], cwd=REPO_ROOT, capture_output=True, text=True)
        assert dedup.returncode == 2 and dedup.stderr == f"error: {message}\n"  # one line, no traceback
        assert time.monotonic() - started < 5 and not (tmp_path / "d").exists()
    shown = subprocess.run([sys.executable, "-m", "jobs.dedup", "--print-settings", "steps=[minhash]",
                            "group=cc_segment"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert "\nsteps: [minhash] " in shown and "\ngroup: [cc_segment] " in shown


@dataclasses.dataclass(frozen=True)
class Scoring:
    """A command that reads files named as its arguments, with a mapping setting."""
    files: list[str] = setting([], "files to score")
    shares: dict[str, float] = setting({}, "shares by name", minimum=0)
    per_line: bool = setting(False, "score each line")


@dataclasses.dataclass(frozen=True)
class ScoringCommand(Scoring):
    output: str = setting("out", "where the scores go")


def test_mapping_settings_arguments_and_the_library_part_of_a_command(capsys):
    assert load_settings(Scoring, None, ["shares.en=0.7", "shares.ja/head=3"]).shares == {"en": 0.7, "ja/head": 3.0}
    assert load_settings(Scoring, None, ["shares={en: 1}"]).shares == {"en": 1.0}
    assert Scoring().shares == {} and Scoring().shares is not Scoring().shares
    for override, message in (("shares.en=-1", r"shares.en=-1.0: expected a value in \[0, ∞\]"),
                              ("shares=3", "shares=3: expected a mapping")):
        with pytest.raises(SettingsError, match=message):
            load_settings(Scoring, None, [override])
    settings = parse_command(Scoring, ["a.txt", "-", "per_line=true", "./b=c.txt"], prog="t", description="",
                             arguments="files")
    assert settings == Scoring(files=["a.txt", "-", "./b=c.txt"], per_line=True)
    with pytest.raises(SystemExit) as refused:  # a misspelt setting is named, not read as a file
        parse_command(Scoring, ["a.txt", "per_lin=true"], prog="t", description="", arguments="files")
    assert refused.value.code == 2 and capsys.readouterr().err.startswith("error: unknown setting per_lin;")
    assert part_of(ScoringCommand(files=["a"], per_line=True, output="o"), Scoring) == Scoring(["a"], {}, True)


def test_readme_column_table_is_the_schema():
    assert schema.markdown_table() in (REPO_ROOT / "README.md").read_text()


def test_every_field_a_stage_writes_is_in_the_schema():
    from curation.extract import ExtractStage
    from curation.lsh import MinHashDedupStage
    from curation.stages import ROW_STAGES

    for stage in (ExtractStage, *ROW_STAGES, MinHashDedupStage):
        assert stage.writes and set(stage.writes) <= set(schema.BY_NAME), stage
    assert ANNOTATED.names[:3] == ["url", "date_download", "digest"] and "wikiref_score" in ANNOTATED.names
    with pytest.raises(KeyError, match="not in curation.schema.FIELDS"):
        schema.check_document({"url": "u", "quality_vibes": 0.9})
    with pytest.raises(KeyError, match="not in curation.schema.FIELDS"):
        schema.ordered(["url", "no_such_field"])


class Sleeper(Stage):
    name = "sleeper"

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def process(self, docs):
        for doc in docs:
            time.sleep(self.seconds)
            yield doc


def test_a_stage_times_its_own_work_only():
    slow, fast = Sleeper(0.02), Sleeper(0.0)
    docs = list(run_stages(({"i": i} for i in range(20)), [slow, fast]))
    assert len(docs) == 20 and slow.stats["in"] == fast.stats["out"] == 20
    assert slow.stats["seconds"] >= 0.4
    assert fast.stats["seconds"] < 0.05  # not the 0.4 s of the stage before it


@dataclasses.dataclass(frozen=True)
class Listing:
    """A command's settings, as small as the two rules below need."""
    paths: list[str] = setting([], "files to read")
    rate: float = setting(0.1, "a learning rate")
    steps: int = setting(10, "how many")


def test_exponent_numbers_are_numbers_and_a_repeated_list_flag_adds(tmp_path):
    # YAML 1.1 reads `3e-4` (no dot) as text; JSON (the trainer's configs) and users mean a number.
    config = tmp_path / "run.json"
    config.write_text('{"rate": 3e-4, "steps": 1e3}')
    assert load_settings(Listing, config) == Listing(rate=3e-4, steps=1000)
    assert load_settings(Listing, None, ["rate=-2E-5", "steps=2e1"]) == Listing(rate=-2e-5, steps=20)
    with pytest.raises(SettingsError, match="steps=0.002: expected an integer"):
        load_settings(Listing, None, ["steps=2e-3"])
    settings = parse_command(Listing, ["--path", "a", "--path", "b", "c", "rate=1e-2"], prog="t", description="",
                             flags={"--path": "paths"})
    assert settings == Listing(paths=["a", "b", "c"], rate=0.01)


# Every command's front door, one bad value each: the name, type or range of a setting it has.
BAD_VALUES = {
    "jobs.curate": "langid.threshold=high", "jobs.dedup": "minhash.num_perm=-3", "jobs.shards": "val_fraction=2",
    "jobs.train_lm": "order=five", "jobs.cutoffs": "sample=-1", "jobs.train_wikiref": "min_positives=many",
    "tokenizer.train": "vocab_size=12", "trainer.train": "batch_size=0", "trainer.finetune": "lora_r=x",
    "trainer.ablate": "max_tokens=none", "curation.score": "no_such_setting=1", "jobs.mixture": "seed=first",
}


@pytest.mark.parametrize("command", sorted(BAD_VALUES))
def test_every_command_refuses_a_bad_value_in_one_line_with_exit_2_quickly(command, tmp_path):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", command, BAD_VALUES[command]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    seconds = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert BAD_VALUES[command].split("=")[0] in result.stderr and "Traceback" not in result.stderr
    assert seconds < 5, f"{command} took {seconds:.1f} s to refuse a bad value"
    assert not list(tmp_path.iterdir())  # nothing written


def test_print_settings_read_in_part_ends_quietly():
    result = subprocess.run(f"{sys.executable} -m jobs.curate --print-settings | head -1", shell=True, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("# The settings of") and result.stderr == ""  # no BrokenPipeError
