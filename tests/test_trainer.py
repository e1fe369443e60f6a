"""The torch LLaMA trainer on shards made here from real text (botchan.en.txt): a SentencePiece BPE
model trained in a temporary directory, documents written with tokenizer.shards.ShardWriter."""

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
import yaml

from curation.settings import load_settings
from tokenizer.shards import ShardError, ShardReader, ShardWriter, tokenizer_hash
from trainer.config import PresetName, TrainConfig
from trainer.data import TrainLoader, WindowOrder, find_shards, val_batches
from trainer.model import (
    PRESETS,
    FeedForward,
    RMSNorm,
    Transformer,
    apply_rope,
    memory_plan,
    preset,
    rope_table,
    saved_bytes_per_token,
)
from trainer.model import main as model_main
from trainer.pretrain import (
    checkpoints,
    grad_accumulation,
    load_checkpoint,
    lr_at,
    model_from_checkpoint,
    train,
    train_state,
)
from trainer.sample import generate, next_token
from trainer.sample import main as sample_main
from trainer.train import main as train_main
from trainer.train import parse_config

REPO_ROOT = Path(__file__).resolve().parent.parent
VOCAB = 512
TINY = dict(vocab_size=VOCAB, max_seq_len=64)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def make_corpus(shared_data, root):
    """(tokenizer model path, shard directory): 2 train shards and 1 validation shard of botchan passages."""
    text = (shared_data / "text" / "botchan.en.txt").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    paragraphs = ["\n".join(lines[i:i + 20]) for i in range(0, len(lines), 20)]  # 20-line documents
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(paragraphs), model_prefix=str(root / "tok"), vocab_size=VOCAB,
        model_type="bpe", split_digits=True, byte_fallback=True, normalization_rule_name="identity",
        num_threads=1, minloglevel=2)
    model_path = root / "tok.model"
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    sha = tokenizer_hash(model_path)
    shards = root / "shards"
    shards.mkdir()
    n_val = len(paragraphs) // 10
    parts = {"train-00000": paragraphs[:len(paragraphs) // 2],
             "train-00001": paragraphs[len(paragraphs) // 2:-n_val], "val-00000": paragraphs[-n_val:]}
    for name, docs in parts.items():
        with ShardWriter(shards / name, sp.vocab_size(), sha) as writer:
            for doc in docs:
                writer.add_document([sp.bos_id()] + sp.encode(doc))
    return model_path, shards


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    return make_corpus(shared_data, tmp_path_factory.mktemp("trainer"))


def tiny_run(corpus, out_dir, **overrides) -> TrainConfig:
    settings = dict(preset="tiny", data_dir=str(corpus[1]), out_dir=str(out_dir), seq_len=64, batch_size=8,
                    max_steps=8, eval_interval=0, eval_batches=2, ckpt_interval=100, log_interval=1000, lr=3e-3)
    settings.update(overrides)
    return TrainConfig(**settings)


# --- model ---

def test_rmsnorm_matches_formula():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6)
    norm.weight.data = torch.randn(16)
    x = torch.randn(3, 5, 16)
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    # Computed in float32 even for bf16 input; only the result is rounded.
    torch.testing.assert_close(norm(x.bfloat16()).float(), (expected.bfloat16()).float(), atol=0.05, rtol=0.02)


def test_swiglu_matches_formula_and_hidden_size():
    torch.manual_seed(0)
    ff = FeedForward(8, 24)
    x = torch.randn(4, 8)
    a, b = x @ ff.w1.weight.T, x @ ff.w3.weight.T
    expected = (a * (1 / (1 + torch.exp(-a))) * b) @ ff.w2.weight.T
    torch.testing.assert_close(ff(x), expected)
    assert PRESETS["7B"].ffn_hidden == 11008  # Meta's 7B: multiple_of(256, 2/3 · 4 · 4096)
    assert PRESETS["13B"].ffn_hidden == 13824


def test_rope_matches_meta_complex_form_and_scores_depend_on_relative_position():
    torch.manual_seed(0)
    head_dim, seq = 16, 40
    cos, sin = rope_table(head_dim, seq, 10000.0)
    x = torch.randn(1, seq, 2, head_dim)
    # Meta's reference: consecutive pairs as complex numbers times e^{i·pos·θ_j}.
    freqs = torch.polar(torch.ones_like(cos), torch.atan2(sin, cos))
    meta = torch.view_as_real(torch.view_as_complex(x.reshape(1, seq, 2, -1, 2)) * freqs[None, :, None]).flatten(3)
    torch.testing.assert_close(apply_rope(x, cos, sin), meta, atol=1e-5, rtol=1e-5)

    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(m, n):
        same_q = q.expand(1, seq, 1, head_dim)
        same_k = k.expand(1, seq, 1, head_dim)
        return apply_rope(same_q, cos, sin)[0, m, 0] @ apply_rope(same_k, cos, sin)[0, n, 0]

    for m, n in [(5, 2), (9, 9), (3, 7)]:
        for shift in (1, 11, 30):
            torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(5, 2), score(5, 3), atol=1e-3)  # and it does depend on the offset


def test_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = Transformer(preset("tiny", **TINY)).eval()
    tokens = torch.randint(0, VOCAB, (2, 32))
    changed = tokens.clone()
    changed[:, 20:] = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


@pytest.mark.parametrize("name,billions", [("7B", 6.74), ("13B", 13.02)])
def test_paper_presets_have_paper_parameter_counts(name, billions):
    with torch.device("meta"):
        model = Transformer(PRESETS[name])
    assert model.output.weight.is_meta
    assert abs(model.num_params() / 1e9 - billions) / billions < 0.005


def test_model_cli_prints_config_and_count(capsys):
    model_main(["--preset", "13B"])
    out = capsys.readouterr().out
    assert "dim          5120" in out and "ffn_hidden   13824" in out and "(13.02B)" in out


def test_grouped_query_attention_shrinks_kv_and_runs():
    cfg = preset("tiny", n_kv_heads=2, **TINY)
    model = Transformer(cfg)
    assert model.layers[0].attention.wk.weight.shape == (2 * cfg.head_dim, cfg.dim)
    logits, loss = model(torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16)))
    assert logits.shape == (2, 16, VOCAB) and math.isfinite(loss.item())


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = Transformer(preset("tiny", **TINY))
    x = torch.randint(0, VOCAB, (4, 32))
    y = torch.randint(0, VOCAB, (4, 32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.5  # from ln(512) ≈ 6.2: random targets are memorised


def test_activation_memory_formula_is_what_autograd_saves():
    """--plan's per-layer and head activation terms against the bytes autograd really saves, with bf16
    parameters as under FSDP's mixed precision (a 2-layer minus a 1-layer model gives one layer)."""
    def saved_per_token(n_layers):
        torch.manual_seed(0)
        model = Transformer(preset("tiny", n_layers=n_layers, **TINY)).to(torch.bfloat16)
        owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        saved = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in owned:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()  # views count once
            return t

        tokens = torch.randint(0, VOCAB, (2, 64))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(tokens, torch.randint(0, VOCAB, (2, 64)))
        return sum(saved.values()) / tokens.numel()

    one, two = saved_per_token(1), saved_per_token(2)
    layer, head = saved_bytes_per_token(preset("tiny", **TINY), residual_bytes=2)
    assert two - one == layer
    assert one - layer == pytest.approx(head, abs=0.05)  # + the 4-byte loss over 128 tokens


def test_memory_plan_for_7b_on_eight_80gb_gpus(capsys):
    model_main(["--preset", "7B", "--plan", "8", "--gpu-memory", "80"])
    out = capsys.readouterr().out
    plans = memory_plan(PRESETS["7B"], world=8, seq_len=2048, gpu_gib=80)
    ddp, fsdp, fsdp_ac = plans["DDP"], plans["FSDP"], plans["FSDP + AC"]
    assert ddp["weights"] + ddp["gradients"] + ddp["optimizer"] == 16 * 6_738_415_616  # 16 B per parameter
    assert ddp["max micro-batch"] == plans["DDP + AC"]["max micro-batch"] == 0  # 100 GiB before activations
    assert fsdp["optimizer"] == ddp["optimizer"] / 8
    assert fsdp_ac["activations / sequence"] < fsdp["activations / sequence"] / 5
    assert fsdp_ac["max micro-batch"] > fsdp["max micro-batch"] > 0
    assert "max micro-batch" in out and "FSDP + AC" in out and "micro-batch x accumulation" in out


# --- data ---

def test_loader_windows_come_from_the_shards_and_resume_exactly(corpus):
    _, shards = corpus
    loader = TrainLoader(shards, seq_len=64, batch_size=4, seed=7)
    stream = np.concatenate([ShardReader(s.prefix).tokens for s in find_shards(shards, "train")])
    x, y = loader.next_batch()
    assert x.shape == y.shape == (4, 64) and torch.equal(x[:, 1:], y[:, :-1])
    row = x[0].numpy()
    assert any(np.array_equal(stream[i:i + 64], row) for i in np.flatnonzero(stream == row[0]))

    state = loader.state_dict()
    expected = [loader.next_batch() for _ in range(3)]
    resumed = TrainLoader(shards, seq_len=64, batch_size=4, seed=7)
    resumed.load_state_dict(state)
    for (ex, ey), (rx, ry) in zip(expected, (resumed.next_batch() for _ in range(3))):
        assert torch.equal(ex, rx) and torch.equal(ey, ry)
    other_seed = TrainLoader(shards, seq_len=64, batch_size=4, seed=8)
    assert not torch.equal(other_seed.next_batch()[0], TrainLoader(shards, 64, 4, seed=7).next_batch()[0])


def test_epoch_visits_every_window_once_and_ranks_split_batches(corpus):
    _, shards = corpus
    loader = TrainLoader(shards, seq_len=64, batch_size=2, seed=1)
    n = len(loader.windows)
    seen = {tuple(row.tolist()) for _ in range(n // 2) for row in loader.next_batch()[0]}
    assert len(seen) == (n // 2) * 2 and loader.epoch == 0
    loader.next_batch()
    if n % 2 == 0:
        assert loader.epoch == 1
    rank0 = TrainLoader(shards, 64, 2, seed=1, rank=0, world_size=2).next_batch()[0]
    rank1 = TrainLoader(shards, 64, 2, seed=1, rank=1, world_size=2).next_batch()[0]
    whole = TrainLoader(shards, 64, 4, seed=1).next_batch()[0]
    assert torch.equal(torch.cat([rank0, rank1]), whole)


def test_val_batches_are_fixed_and_mixed_tokenizers_are_refused(corpus, tmp_path):
    model_path, shards = corpus
    first = list(val_batches(shards, 64, 4, max_batches=3))
    assert len(first) == 3 and all(torch.equal(a[0], b[0]) for a, b in zip(first, val_batches(shards, 64, 4, 3)))
    bos = spm.SentencePieceProcessor(model_file=str(model_path)).bos_id()
    assert ShardReader(shards / "val-00000").tokens[0] == bos

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name, sha in [("train-00000", tokenizer_hash(model_path)), ("train-00001", bytes(32))]:
        with ShardWriter(mixed / name, VOCAB, sha) as writer:
            writer.add_document(np.arange(200) % VOCAB)
    with pytest.raises(ShardError, match="tokenizer or vocabulary differs"):
        find_shards(mixed, "train")
    with pytest.raises(FileNotFoundError, match="make shards"):
        find_shards(tmp_path, "val")


def test_thousands_of_shards_train_under_a_low_open_file_limit(corpus, tmp_path):
    """1100 shards, 256 file handles: the old reader (two memory maps, each with a handle, per shard) cannot
    even open them; the trainer reads each shard only while it reads it."""
    model_path, _ = corpus
    sha = tokenizer_hash(model_path)
    many = tmp_path / "many"
    many.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1100):
        with ShardWriter(many / f"train-{i:05d}", VOCAB, sha, durable=False) as writer:
            writer.add_document(rng.integers(0, VOCAB, 40))
    with ShardWriter(many / "val-00000", VOCAB, sha, durable=False) as writer:
        writer.add_document(rng.integers(0, VOCAB, 400))

    def limited():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    all_open = subprocess.run(
        [sys.executable, "-c", "import sys, pathlib; from tokenizer.shards import ShardReader; "
         "readers = [ShardReader(p.with_suffix('')) for p in pathlib.Path(sys.argv[1]).glob('train-*.idx')]",
         str(many)], preexec_fn=limited, env=env, capture_output=True, text=True)
    assert all_open.returncode != 0 and "Too many open files" in all_open.stderr  # the limit bites
    run = subprocess.run([sys.executable, "-m", "trainer.train", f"data_dir={many}", f"out_dir={tmp_path / 'run'}",
                          "preset=tiny", "seq_len=16", "batch_size=64", "max_steps=3", "eval_interval=0",
                          "eval_batches=2"], preexec_fn=limited, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "2,200 training windows" in run.stdout  # 1100 shards × 2 windows of 16 + 1 tokens
    assert train_state(checkpoints(tmp_path / "run")[-1])["data"]["position"] == 3 * 64


def test_window_order_is_a_permutation_computed_per_position():
    def order(n, seed=5, epoch=0, positions=None):
        permutation = WindowOrder(n, seed, epoch)
        return [permutation[p] for p in (range(n) if positions is None else positions)]

    for n in (1, 2, 3, 7, 64, 1000, 4097):
        assert sorted(order(n)) == list(range(n))
    assert order(100) != list(range(100))  # shuffled
    assert order(100) != order(100, epoch=1) and order(100) != order(100, seed=6)  # per epoch, per seed
    assert order(100)[40:50] == order(100, positions=range(40, 50))  # random access
    # 300B tokens at seq_len 128 are 2.3e9 windows: a permutation array would take 19 GB; this, 4 keys.
    positions = order(2_343_750_000, positions=range(100_000))
    assert len(set(positions)) == 100_000 and max(positions) < 2_343_750_000
    assert len(WindowOrder(2_343_750_000, 1, 0).keys) == 4


def test_resume_refuses_a_changed_shard_list_unless_allowed(corpus, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(corpus[1], data)
    train(tiny_run(corpus, tmp_path / "run", data_dir=str(data), max_steps=4, stop_at=1))
    state = train_state(checkpoints(tmp_path / "run")[-1])
    assert state["data"]["shards"] == [[os.path.basename(s.prefix), s.num_tokens] for s in find_shards(data, "train")]
    with ShardWriter(data / "train-00002", VOCAB, tokenizer_hash(corpus[0])) as writer:
        writer.add_document(np.arange(300) % VOCAB)
    with pytest.raises(ValueError, match=r"added \['train-00002'\], removed \[\].*allow_shard_change"):
        train(tiny_run(corpus, tmp_path / "run", data_dir=str(data), max_steps=4, stop_at=2))
    (data / "train-00002.idx").unlink()
    (data / "train-00001.idx").unlink()
    with pytest.raises(ValueError, match=r"added \[\], removed \['train-00001'\]"):
        train(tiny_run(corpus, tmp_path / "run", data_dir=str(data), max_steps=4, stop_at=2))
    resumed = train(tiny_run(corpus, tmp_path / "run", data_dir=str(data), max_steps=4, stop_at=2,
                             allow_shard_change=True))
    assert len(resumed["losses"]) == 1 and train_state(resumed["checkpoint"])["data"]["shards"] == [
        ["train-00000", find_shards(data, "train")[0].num_tokens]]


def test_token_ids_outside_the_vocabulary_fail_naming_the_shard(corpus, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    with ShardWriter(bad / "train-00000", VOCAB, tokenizer_hash(corpus[0])) as writer:
        writer.add_document(np.arange(1000) % VOCAB)
    tokens = np.memmap(bad / "train-00000.bin", dtype=np.uint16, mode="r+")
    tokens[500] = VOCAB + 7  # a corrupt shard: the header's vocabulary is 512
    tokens.flush()
    del tokens
    loader = TrainLoader(bad, seq_len=64, batch_size=15, seed=0)  # 15 of the 15 windows: one holds token 500
    with pytest.raises(ShardError, match=r"train-00000\.bin: token id 519 .* outside the vocabulary of 512"):
        loader.next_batch()


# --- training ---

def test_schedule_warms_up_then_decays_to_ten_percent():
    lrs = [lr_at(s, 1.0, 10, 100, 0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[100] == pytest.approx(0.1)


def test_7b_recipe_takes_4m_tokens_per_step_at_any_power_of_two_world_size():
    cfg = parse_config(["--config", "trainer/configs/7B.json"])
    assert (cfg.seq_len, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio) == (2048, 3e-4, 2000, 0.1)
    assert cfg.parallelism == "fsdp" and cfg.activation_checkpointing
    for world in (8, 64):
        assert grad_accumulation(cfg, world) * cfg.batch_size * cfg.seq_len * world == 4 * 1024 ** 2
    with pytest.raises(ValueError, match="not a multiple of batch_size × seq_len × world size"):
        grad_accumulation(cfg, 6)


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(corpus, tmp_path):
    straight = train(tiny_run(corpus, tmp_path / "straight", grad_accum=2))["losses"]
    first = train(tiny_run(corpus, tmp_path / "resumed", grad_accum=2, stop_at=4))["losses"]
    rest = train(tiny_run(corpus, tmp_path / "resumed", grad_accum=2))["losses"]
    assert len(first) == 4 and len(rest) == 4
    assert first + rest == straight  # bit for bit: same data, same optimizer state, same RNG

    state = train_state(checkpoints(tmp_path / "resumed")[-1])
    assert state["step"] == 8 and state["data"]["position"] == 8 * 2 * 8
    assert state["tokenizer_sha256"] == tokenizer_hash(corpus[0]).hex()
    assert [p.name for p in checkpoints(tmp_path / "resumed")] == ["step-00000008"]  # the older one is gone


def test_ddp_under_torchrun_matches_one_process_on_the_global_batch(corpus, tmp_path):
    """Two CPU ranks (gloo) with 4 windows each take the steps of one process with 8."""
    single = train(tiny_run(corpus, tmp_path / "single", max_steps=4))["losses"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "trainer.train", f"data_dir={corpus[1]}", f"out_dir={tmp_path / 'ddp'}", "preset=tiny",
                    "seq_len=64", "batch_size=4", "max_steps=4", "eval_interval=0", "eval_batches=2", "lr=0.003"],
                   check=True, env=env, capture_output=True)
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    ddp = [r["loss"] for r in rows if "loss" in r]
    assert ddp == pytest.approx(single, abs=1e-4)
    assert train_state(checkpoints(tmp_path / "ddp")[-1])["data"]["position"] == 4 * 8


def test_training_on_real_shards_lowers_validation_loss_and_samples(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    result = train(tiny_run(corpus, out, max_steps=60, eval_interval=30, eval_batches=4))
    (step0, initial), *_, (last_step, final) = result["val_losses"]
    assert step0 == 0 and last_step == 60
    assert initial == pytest.approx(math.log(VOCAB), abs=0.3)  # untrained: near uniform
    assert final < initial - 1.0
    # Below the unigram cross-entropy of the validation tokens: the model uses context, not just frequencies.
    train_tokens = np.concatenate([ShardReader(s.prefix).tokens for s in find_shards(corpus[1], "train")])
    val_tokens = np.concatenate([ShardReader(s.prefix).tokens for s in find_shards(corpus[1], "val")])
    unigram = (np.bincount(train_tokens, minlength=VOCAB) + 1) / (len(train_tokens) + VOCAB)
    assert final < -np.log(unigram[val_tokens]).mean()
    assert (out / "loss.png").stat().st_size > 10_000
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 60 and all({"lr", "grad_norm", "tokens_per_s"} <= set(r) for r in steps)

    model = model_from_checkpoint(load_checkpoint(result["model"]))
    sp = spm.SentencePieceProcessor(model_file=str(corpus[0]))
    prompt = [sp.bos_id()] + sp.encode("I said to him")
    cached = generate(model, prompt, 20)
    assert cached == generate(model, prompt, 20, use_cache=False)  # the KV cache changes nothing
    assert len(cached) == len(prompt) + 20 and isinstance(sp.decode(cached[1:]), str)

    capsys.readouterr()
    sample_main(["--checkpoint", str(result["model"]), "--tokenizer", str(corpus[0]), "--prompt", "I said",
                 "--max-new-tokens", "30", "--temperature", "0.8", "--top-k", "50", "--top-p", "0.95"])
    sampled = capsys.readouterr().out
    assert sampled.startswith("I said") and len(sampled) > len("I said") + 10


def test_sampling_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, -1.0, -2.0]])
    g = torch.Generator().manual_seed(0)
    assert next_token(logits, 0.0, None, None).item() == 0
    assert {next_token(logits, 1.0, 2, None, g).item() for _ in range(200)} == {0, 1}
    # softmax ≈ [.66, .24, .09, …]: top_p 0.8 keeps the first two, 0.5 only the first.
    assert {next_token(logits, 1.0, None, 0.8, g).item() for _ in range(200)} == {0, 1}
    assert {next_token(logits, 1.0, None, 0.5, g).item() for _ in range(50)} == {0}
    assert len({next_token(logits, 5.0, None, None, g).item() for _ in range(300)}) == 5


def test_cli_says_to_make_shards_when_missing(tmp_path):
    with pytest.raises(SystemExit, match="make shards"):
        train_main([f"data_dir={tmp_path / 'none'}"])
    with pytest.raises(SystemExit) as refused:
        train_main(["no_such_setting=1"])
    assert refused.value.code == 2


# --- the command line: trainer.config's settings, through curation.settings.parse_command ---

def refused(module: str, *args: str) -> str:
    """`python -m module args…` refuses its command line: exit 2 within 5 s (before torch's import), one
    `error:` line and no traceback. Returns that line."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr[-2000:]
    assert seconds < 5, seconds
    return done.stderr.strip()


def printed_settings(module: str, *args: str) -> dict:
    """The settings `python -m module --print-settings args…` prints (exit 0), read back as YAML."""
    done = subprocess.run([sys.executable, "-m", module, "--print-settings", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return yaml.safe_load(done.stdout)


def test_train_command_refuses_a_bad_value_before_torch_and_prints_its_settings():
    assert refused("trainer.train", "max_steps=abc") == "error: max_steps='abc': expected an integer"
    assert "preset='7b': expected one of 7B" in refused("trainer.train", "--config", "trainer/configs/7B.json",
                                                         "preset=7b")
    assert "unknown setting max_step" in refused("trainer.train", "max_step=5")
    assert "ckpt_interval=0: expected a value in [1, ∞]" in refused("trainer.train", "ckpt_interval=0")
    shown = printed_settings("trainer.train", "--config", "trainer/configs/7B.json", "max_steps=7", "lr=1e-4")
    assert (shown["max_steps"], shown["lr"], shown["preset"], shown["seq_len"]) == (7, 1e-4, "7B", 2048)


def test_every_shipped_config_reads_and_presets_are_the_models():
    for config in sorted((REPO_ROOT / "trainer" / "configs").glob("*.json")):
        cfg = load_settings(TrainConfig, config)  # JSON is YAML; an unknown or mistyped field fails here
        assert cfg.preset in PRESETS and cfg.data_dir == "runs/local/shards", config
    assert set(typing.get_args(PresetName)) == set(PRESETS)
