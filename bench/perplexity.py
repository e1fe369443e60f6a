"""PerplexityStage documents/s vs a bare `sp.encode` + `kenlm.Model.score` loop on the same texts.

Texts: the English documents of the real WET sample (../shared/data/wet), repeated for volume.
Models: `models/lm/en.*` when `make lm` has made them (or BENCH_LM_DIR), else a small English model
trained here from ../shared/data/wikipedia (said in the output). Both sides apply CCNet's
`normalize` (the formula needs it); the bare loop is the least code that computes the same values.

    .venv/bin/python -m bench.perplexity
"""

import os
import tempfile
from pathlib import Path

import kenlm
import sentencepiece as spm

from bench.common import REPO_ROOT, SHARED_DATA, report, timed
from curation.normalize import normalize
from curation.perplexity import PerplexitySettings, PerplexityStage, pp

REPEAT = 5
ROUNDS = 5


def models_dir(tmp: Path) -> Path:
    given = Path(os.environ.get("BENCH_LM_DIR", REPO_ROOT / "models" / "lm"))
    if (given / "en.arpa.bin").exists() and (given / "en.sp.model").exists():
        print(f"models: {given}")
        return given
    from jobs.train_lm import train_language

    wiki = SHARED_DATA / "wikipedia"
    print("models: none in models/lm; training a small English model (vocab 8000) from the shared Wikipedia text")
    train_language("en", [str(wiki / "en"), str(wiki / "wikitext")], tmp, vocab_size=8000, memory="64M",
                   filter_language=True)
    return tmp


def english_texts() -> list[str]:
    from jobs.cutoffs import read_documents

    wet = SHARED_DATA / "wet" / "CC-MAIN-2019-30-697-docs.warc.wet.gz"
    return [d["raw_content"] for d in read_documents([str(wet)]) if d["language"] == "en"]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lm_dir = models_dir(Path(tmp))
        texts = english_texts() * REPEAT
        chars = sum(map(len, texts))
        print(f"texts: {len(texts)} English WET documents ({chars / 1e6:.1f} M chars; the 210 real ones x{REPEAT})")
        stage = PerplexityStage(PerplexitySettings(str(lm_dir)))
        docs = [{"raw_content": t, "language": "en"} for t in texts]
        list(stage([dict(d) for d in docs[:10]]))  # load the models outside the timing

        sp = spm.SentencePieceProcessor(model_file=str(lm_dir / "en.sp.model"))
        lm = kenlm.Model(str(lm_dir / "en.arpa.bin"))

        def ours():
            return [d["perplexity"] for d in stage(dict(d) for d in docs)]

        def bare():
            out = []
            for text in texts:
                pieces = sp.encode(normalize(text), out_type=str)
                out.append(pp(lm.score(" ".join(pieces)), len(pieces) + 1))
            return out

        assert ours() == bare(), "the stage and the bare loop disagree"
        # Alternate the two, best of ROUNDS each: the machine is shared, load drifts.
        t_bare = t_ours = float("inf")
        for _ in range(ROUNDS):
            t_bare = min(t_bare, timed(bare, repeat=1))
            t_ours = min(t_ours, timed(ours, repeat=1))
        report("perplexity stage", len(texts), "docs", t_ours, t_bare, "bare sp.encode + kenlm score loop")


if __name__ == "__main__":
    main()
