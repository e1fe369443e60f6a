r"""arXiv on the shared papers (emcee: one file; celerite: \include'd macro files, \input tables, a
missing vc.tex, \renewcommand of \section, \def under \makeatletter, \bibliography{…}): the reader's
forms (folder, one paper's archive, a bulk tar of gzipped papers), LLaMA's cleaning rules, hostile
archives counted without a crash or a write, and the job on Spark (jobs.sources.arxiv): a folder of paper
folders and a bulk tar of the same papers, LLaMA's rules on its documents, its counts, a rerun."""

import gzip
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation import archives, schema, storage
from curation.pipeline import run_stages, stage_stats
from curation.settings import load_settings
from curation.sources import arxiv
from jobs.sources.engine import job_settings, run
from tests.conftest import REPO_ROOT

SETTINGS = arxiv.ArxivSettings()
# What celerite redefines but the cleaning keeps by name: LaTeX's own sectioning commands.
RENEWED_SECTIONING = {"section", "subsection"}


def clean(docs, settings=SETTINGS):
    stages = arxiv.stages(settings)
    return list(run_stages(docs, stages)), stage_stats(stages)


def read(location, settings=SETTINGS):
    counts = Counter()
    return list(arxiv.read_papers(str(location), settings, counts)), counts


def tar_bytes(files: dict[str, bytes], mode="w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def defined_macros(folder: Path) -> set[str]:
    """The macro names the paper's own files define, found independently of the module's parser."""
    source = "".join(p.read_text() for p in folder.rglob("*.tex"))
    return set(re.findall(r"\\(?:re)?newcommand\*?\s*\{?\s*\\([A-Za-z@]+)", source)) | set(
        re.findall(r"\\[egx]?def\s*\\([A-Za-z@]+)", source))


def comments_outside_verbatim(text: str) -> list[str]:
    text = re.sub(r"\\begin\{lstlisting\}.*?\\end\{lstlisting\}", "", text, flags=re.S)
    return [line for line in text.splitlines() if re.search(r"(?<!\\)(?:\\\\)*%", line)]


def test_a_paper_folder_is_one_document_with_its_inputs_inlined(shared_data):
    folder = shared_data / "arxiv" / "celerite"
    docs, counts = read(folder)
    assert len(docs) == 1 and counts == Counter({"missing_input": 1})  # vc.tex, absent as in the repository
    doc = docs[0]
    assert (doc["arxiv_id"], doc["arxiv_main_file"], doc["arxiv_unresolved_inputs"]) == ("celerite", "ms.tex", 1)
    for inlined in ("figures/example-stats.tex", "figures/examples-macros.tex", "figures/rotation/rotation.tex",
                    "figures/transit/transit-params-edited.tex"):
        assert (folder / inlined).read_text() in doc["raw_content"]
    assert "\\include{vc}" in doc["raw_content"] and "\\input{figures/" not in doc["raw_content"]


@pytest.mark.parametrize("paper, sections", [("emcee", 7), ("celerite", 10)])
def test_the_cleaned_latex_follows_llamas_rules(shared_data, paper, sections):
    folder = shared_data / "arxiv" / paper
    (doc,), stats = clean(read(folder)[0])
    text = doc["raw_content"]
    assert text.startswith("\\section{Introduction}")
    assert not re.search(r"\\bibitem|thebibliography|\\bibliography(style)?\{", text)
    assert comments_outside_verbatim(text) == []
    macros = defined_macros(folder) - RENEWED_SECTIONING
    assert len(macros) > 40
    assert [m for m in macros if re.search(rf"\\{m}(?![A-Za-z@])", text)] == []
    # Every section of the body is kept, the appendix after emcee's bibliography too.
    assert len(re.findall(r"\\section\*?\{", text)) == sections
    assert stats["arxiv_sections"]["bibliography_parts_removed"] == 1


def test_documents_and_drops_on_the_shared_papers(shared_data):
    docs, counts = [], Counter()
    for paper in ("emcee", "celerite"):
        docs += arxiv.read_papers(str(shared_data / "arxiv" / paper), SETTINGS, counts)
    out, stats = clean(docs)
    assert [d["arxiv_id"] for d in out] == ["emcee", "celerite"]
    for doc in out:
        schema.check_document(doc)
        assert set(arxiv.SOURCE.fields) < doc.keys()
    assert {name: (s["in"], s["out"], s["dropped"]) for name, s in stats.items()} == {
        "arxiv_comments": (2, 2, {}), "arxiv_macros": (2, 2, {}), "arxiv_sections": (2, 2, {})}
    assert stats["arxiv_comments"]["comments_removed"] == 15 + 33
    assert stats["arxiv_macros"]["definitions_removed"] == 56 + 79
    # celerite's \githash and \gitdate (defined by the missing vc.tex) stay as written, counted as its input.
    assert "\\texttt{\\githash} (\\gitdate)" in out[1]["raw_content"] and counts["missing_input"] == 1


def test_without_the_appendix_the_text_ends_before_the_bibliography(shared_data):
    (doc,), _ = clean(read(shared_data / "arxiv" / "emcee")[0], replace(SETTINGS, keep_appendix=False))
    assert re.findall(r"\\section\{([^}]*)\}", doc["raw_content"])[-1] == "Discussion \\& Tips"
    assert doc["raw_content"].rstrip().endswith("open-source Python {\\sffamily numpy}\\ package.")


def test_a_bulk_tar_of_gzipped_papers_and_one_papers_archive(shared_data, tmp_path):
    celerite, emcee = shared_data / "arxiv" / "celerite", shared_data / "arxiv" / "emcee"
    bulk = tmp_path / "arXiv_src_1703_001.tar"
    bulk.write_bytes(tar_bytes({
        "1703/1703.09710.gz": gzip.compress(tar_bytes(folder_files(celerite))),
        "1703/1202.3665.gz": gzip.compress((emcee / "ms.tex").read_bytes()),
        "1703/1703.00001.pdf": b"%PDF-1.4 a PDF-only paper"}))
    docs, counts = read(bulk)
    assert [(d["arxiv_id"], d["arxiv_main_file"]) for d in docs] == [("1703.09710", "ms.tex"),
                                                                     ("1202.3665", "1202.3665")]
    assert counts == Counter({"dropped.not_latex_source": 1, "missing_input": 1})
    one_paper = tmp_path / "1703.09710.tar.gz"
    one_paper.write_bytes(gzip.compress(tar_bytes(folder_files(celerite))))
    from_folders = clean(read(celerite)[0] + read(emcee)[0])[0]
    assert [d["raw_content"] for d in clean(docs)[0]] == [d["raw_content"] for d in from_folders]
    assert read(one_paper)[0][0]["raw_content"] == read(celerite)[0][0]["raw_content"]


def snapshot(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def test_hostile_names_and_inputs_stay_inside_the_paper(shared_data, tmp_path, monkeypatch):
    main = (shared_data / "arxiv" / "emcee" / "ms.tex").read_text()
    main = main.replace("\\section{Introduction}", "\\section{Introduction}\n\\input{../../x}\n\\input{/abs}\n"
                        "\\input{loop/a}\n\\include{nothere}", 1)
    paper = tmp_path / "2401.00001.tar.gz"
    paper.write_bytes(tar_bytes({"ms.tex": main.encode(), "../../x.tex": b"\\documentclass{x} outside",
                                 "/abs.tex": b"absolute", "loop/a.tex": b"A \\input{loop/b}",
                                 "loop/b.tex": b"B \\input{loop/a}"}, mode="w:gz"))
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    (doc,), counts = read(paper)
    assert snapshot(tmp_path) == before and not Path("/abs.tex").exists()
    assert counts == Counter({"dropped.unsafe_member_name": 2, "input_outside_paper": 2, "input_cycle": 1,
                              "missing_input": 1})
    assert doc["arxiv_unresolved_inputs"] == 4 and doc["arxiv_main_file"] == "ms.tex"
    assert "\\input{../../x}\n\\input{/abs}\nA B \\input{loop/a}\n\\include{nothere}" in doc["raw_content"]


def test_a_link_in_a_paper_folder_is_not_followed(shared_data, tmp_path):
    folder = tmp_path / "paper"
    folder.mkdir()
    (folder / "ms.tex").write_bytes((shared_data / "arxiv" / "emcee" / "ms.tex").read_bytes())
    (folder / "secret.tex").symlink_to(shared_data / "arxiv" / "celerite" / "ms.tex")
    (doc,), counts = read(folder)
    assert counts == Counter({"dropped.not_a_file": 1}) and doc["arxiv_main_file"] == "ms.tex"


def test_a_paper_over_the_cap_is_counted_and_skipped(shared_data, tmp_path):
    emcee = gzip.compress((shared_data / "arxiv" / "emcee" / "ms.tex").read_bytes())
    celerite = gzip.compress(tar_bytes(folder_files(shared_data / "arxiv" / "celerite")))
    bulk = tmp_path / "bulk.tar"
    bulk.write_bytes(tar_bytes({"1202.3665.gz": emcee, "1703.09710.gz": celerite}))
    cap = 50_000  # over emcee's gzip and its ms.tex (41,540 bytes), under celerite's gzipped tar
    assert len(emcee) < cap < len(celerite)
    docs, counts = read(bulk, replace(SETTINGS, max_member_bytes=cap))
    assert [d["arxiv_id"] for d in docs] == ["1202.3665"] and counts == Counter({"dropped.member_too_large": 1})


def test_a_corrupt_paper_fails_alone_and_a_corrupt_input_fails(shared_data, tmp_path):
    emcee = gzip.compress((shared_data / "arxiv" / "emcee" / "ms.tex").read_bytes())
    celerite = gzip.compress(tar_bytes(folder_files(shared_data / "arxiv" / "celerite")))
    bulk = tmp_path / "bulk.tar"
    bulk.write_bytes(tar_bytes({"1703.09710.gz": celerite[:len(celerite) // 2], "1202.3665.gz": emcee}))
    docs, counts = read(bulk)
    assert [d["arxiv_id"] for d in docs] == ["1202.3665"] and counts == Counter({"dropped.corrupt_paper": 1})
    cut = tmp_path / "1703.09710.tar.gz"
    cut.write_bytes(celerite[:len(celerite) // 2])
    with pytest.raises(archives.ArchiveError):
        read(cut)
    assert sorted(os.listdir(tmp_path)) == ["1703.09710.tar.gz", "bulk.tar"]


def test_runaway_macros_and_inputs_are_dropped(shared_data, tmp_path):
    emcee = (shared_data / "arxiv" / "emcee" / "ms.tex").read_text()
    loop = {"raw_content": "\\newcommand{\\again}{\\again}\n" + emcee.replace("\\this\\ ", "\\again\\ ")}
    bomb = {"raw_content": "\\newcommand{\\boom}{\\boom\\boom}\n" + emcee.replace("\\this\\ ", "\\boom\\ ")}
    out, stats = clean([loop, bomb], replace(SETTINGS, max_chars=10 * len(emcee)))
    assert out == [] and stats["arxiv_macros"]["dropped"] == {"macro_recursion": 1, "paper_too_large": 1}
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "ms.tex").write_text(emcee.replace("\\section{Introduction}", "\\input{many}" * 30, 1))
    (folder / "many.tex").write_text("\\input{few}" * 40)
    (folder / "few.tex").write_text("x")
    docs, counts = read(folder)
    assert docs == [] and counts == Counter({"dropped.too_many_inputs": 1})


# ---- the job (jobs.sources.arxiv) on Spark: one run, then a rerun ------------------------------------

def job_settings_for(inputs: list[str], output: Path):
    return load_settings(job_settings(arxiv.SOURCE), None, [f"input={json.dumps(inputs)}", f"output={output}"])


def published(run_dir: Path) -> list[dict]:
    return pq.read_table(sorted(storage.published_files(str(run_dir / "documents")))).to_pylist()


@pytest.fixture(scope="module")
def job_run(spark, shared_data, tmp_path_factory):
    """The shared folder of the two paper folders, and a bulk tar of the same papers (and a PDF-only one)."""
    work = tmp_path_factory.mktemp("arxiv-job")
    celerite, emcee = shared_data / "arxiv" / "celerite", shared_data / "arxiv" / "emcee"
    bulk = work / "arXiv_src_1703_001.tar"
    bulk.write_bytes(tar_bytes({"1703/1703.09710.gz": gzip.compress(tar_bytes(folder_files(celerite))),
                                "1703/1202.3665.gz": gzip.compress((emcee / "ms.tex").read_bytes()),
                                "1703/1703.00001.pdf": b"%PDF-1.4 a PDF-only paper"}))
    inputs = [str(shared_data / "arxiv"), str(bulk)]
    stats = run(spark, arxiv.SOURCE, job_settings_for(inputs, work / "run"), str(work / "run"))
    return {"run": work / "run", "inputs": inputs, "stats": stats, "papers": {"celerite": celerite, "emcee": emcee}}


def test_a_folder_of_paper_folders_gives_each_paper_as_one_input(job_run):
    manifest = json.loads((job_run["run"] / "manifest.json").read_text())["inputs"]
    papers = job_run["papers"]
    assert [(entry["source"], entry["state"], entry["documents"]) for entry in manifest] == [
        (str(papers["celerite"]), "done", 1), (str(papers["emcee"]), "done", 1), (job_run["inputs"][1], "done", 2)]


def test_the_job_keeps_llamas_rules_on_every_paper(job_run):
    docs = sorted(published(job_run["run"]), key=lambda doc: doc["arxiv_id"])
    assert [(d["arxiv_id"], d["source"], d["arxiv_main_file"]) for d in docs] == [
        ("celerite", "arxiv", "ms.tex"), ("emcee", "arxiv", "ms.tex")]
    for doc in docs:
        text, folder = doc["raw_content"], job_run["papers"][doc["arxiv_id"]]
        assert text.startswith("\\section{Introduction}")
        assert not re.search(r"\\bibitem|thebibliography|\\bibliography(style)?\{", text)
        assert comments_outside_verbatim(text) == []
        assert [m for m in defined_macros(folder) - RENEWED_SECTIONING if re.search(rf"\\{m}(?![A-Za-z@])", text)] == []


def test_the_counts_in_stats(job_run):
    stages = job_run["stats"]["stages"]
    assert (stages["read"]["in"], stages["read"]["out"]) == (5, 4)
    assert stages["read"]["dropped"] == {"not_latex_source": 1} and stages["read"]["missing_input"] == 2
    assert {name: (stages[name]["in"], stages[name]["out"], stages[name]["dropped"]) for name in
            ("arxiv_comments", "arxiv_macros", "arxiv_sections", "exact_dedup")} == {
        "arxiv_comments": (4, 4, {}), "arxiv_macros": (4, 4, {}), "arxiv_sections": (4, 4, {}),
        "exact_dedup": (4, 2, {"duplicate": 2})}  # the bulk tar's copies of the folders' papers
    assert stages["arxiv_sections"]["bibliography_parts_removed"] == 4
    assert job_run["stats"]["documents_out"] == 2


def test_a_rerun_resumes(job_run, spark):
    run_dir, inputs = job_run["run"], job_run["inputs"]
    marker = (run_dir / "documents" / storage.PUBLISHED).read_text()
    again = run(spark, arxiv.SOURCE, job_settings_for(inputs, run_dir), str(run_dir))
    assert again["inputs_resumed"] == 3 and "read" not in again["tasks"] and again["documents_out"] == 2
    assert (run_dir / "documents" / storage.PUBLISHED).read_text() == marker


def test_the_command_line():
    done = subprocess.run([sys.executable, "-m", "jobs.sources.arxiv", "--print-settings"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "dedup: true" in done.stdout and "keep_appendix: true" in done.stdout
