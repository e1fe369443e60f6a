"""Instruction tuning (trainer.finetune) on the real Self-Instruct seed tasks, starting from a tiny model
pretrained here on botchan shards (tests.test_trainer's corpus): LoRA through PEFT, the merged export,
resume, full fine-tuning under torchrun with FSDP, and sampling with --instruction."""

import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tests.test_trainer import make_corpus, printed_settings, refused, tiny_run
from trainer.config import FinetuneConfig
from trainer.convert import read
from trainer.finetune import FLAGS, parse_config
from trainer.instruct import (
    IGNORE_INDEX,
    alpaca_prompt,
    collate,
    finetune,
    read_examples,
    response_loss_sum,
    split_examples,
    tokenize,
)
from trainer.model import PRESETS, lora_plan
from trainer.model import main as model_main
from trainer.pretrain import checkpoints, load_checkpoint, train, train_state
from trainer.sample import beam_search, generate
from trainer.sample import main as sample_main

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory):
    return make_corpus(shared_data, tmp_path_factory.mktemp("finetune-corpus"))


@pytest.fixture(scope="module")
def base(corpus, tmp_path_factory):
    """A tiny model pretrained for 150 steps on botchan (validation loss about 4.5): its model.pt."""
    return train(tiny_run(corpus, tmp_path_factory.mktemp("base"), max_steps=150))["model"]


@pytest.fixture(scope="module")
def seed_tasks(shared_data):
    return shared_data / "instruct" / "self-instruct-seed-tasks.jsonl"


def lora_config(seed_tasks, corpus, base, out_dir, **overrides) -> FinetuneConfig:
    settings = dict(data=str(seed_tasks), checkpoint=str(base), tokenizer=str(corpus[0]), out_dir=str(out_dir),
                    max_len=256, val_size=25, batch_size=16, micro_batch_size=8, max_steps=30, lr=1e-2,
                    log_interval=1000)
    settings.update(overrides)
    return FinetuneConfig(**settings)


@pytest.fixture(scope="module")
def lora(seed_tasks, corpus, base, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    return finetune(lora_config(seed_tasks, corpus, base, out, merge=True)), out


# --- data ---

def test_templates_are_alpacas_and_every_record_form_reads(tmp_path, seed_tasks):
    assert alpaca_prompt("Add.", "2 and 3") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:")
    assert alpaca_prompt("Say hi.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nSay hi.\n\n### Response:")
    tasks = [json.loads(line) for line in seed_tasks.read_text().splitlines()]
    examples = read_examples(seed_tasks)  # Self-Instruct: one example per instance
    assert len(examples) == sum(len(t["instances"]) for t in tasks) >= 175
    assert examples[0] == {"instruction": tasks[0]["instruction"], "input": tasks[0]["instances"][0]["input"],
                           "output": tasks[0]["instances"][0]["output"]}
    alpaca = [{"instruction": "Add.", "input": "2 and 3", "output": "5"}, {"instruction": "Hi.", "output": "Hello"},
              {"instruction": "No output"}, {"input": "no instruction", "output": "x"}]
    (tmp_path / "a.json").write_text(json.dumps(alpaca))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in alpaca) + "\n")
    for name in ("a.json", "a.jsonl"):
        assert read_examples(tmp_path / name) == [{"instruction": "Add.", "input": "2 and 3", "output": "5"},
                                                  {"instruction": "Hi.", "input": "", "output": "Hello"}]
    (tmp_path / "bad.jsonl").write_text('{"instruction": "a", "output": "b"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_examples(tmp_path / "bad.jsonl")
    train_part, held = split_examples(examples, 25, seed=42)
    assert len(held) == 25 and len(train_part) + 25 == len(examples)
    assert not {e["instruction"] + e["input"] for e in held} & {e["instruction"] + e["input"] for e in train_part}


def test_prompt_tokens_carry_no_loss(corpus, base, seed_tasks):
    sp = spm.SentencePieceProcessor(model_file=str(corpus[0]))
    examples = [e for e in read_examples(seed_tasks) if tokenize(sp, e, 256)][:6]
    tokenized = [tokenize(sp, e, 256) for e in examples]
    x, y = collate(tokenized, sp.eos_id())
    for row, example in enumerate(examples):
        prompt = [sp.bos_id()] + sp.encode(alpaca_prompt(example["instruction"], example["input"]))
        response = (sp.encode(example["output"]) + [sp.eos_id()])[:256 - len(prompt)]
        assert x[row, :len(prompt)].tolist() == prompt
        # Target t is token t+1: the positions before the response's first token predict nothing.
        assert (y[row, :len(prompt) - 1] == IGNORE_INDEX).all()
        assert y[row, len(prompt) - 1:len(prompt) - 1 + len(response)].tolist() == response
        assert (y[row, len(prompt) - 1 + len(response):] == IGNORE_INDEX).all()  # padding
    model = read(base, max_seq_len=256).model()
    logits = model(x)
    by_hand = -logits.log_softmax(-1).gather(-1, y.clamp(min=0)[..., None])[..., 0][y != IGNORE_INDEX].sum()
    torch.testing.assert_close(response_loss_sum(model, x, y), by_hand)
    # Changing every prompt label changes nothing: they are not in the loss.
    assert int((y != IGNORE_INDEX).sum()) == sum(len(lab) - lab.count(IGNORE_INDEX) for _, lab in tokenized)


# --- LoRA ---

def test_lora_lowers_held_out_loss_and_trains_only_the_adapters(lora, base, capsys):
    result, out = lora
    (step0, before), *_, (step, after) = result["val_losses"]
    assert step0 == 0 and step == 30
    assert after < before - 0.03, result["val_losses"]
    # Rank 8 on wq and wv of 4 blocks of width 128: 2 matrices × (8×128 + 128×8) per block.
    assert result["trainable"] == 4 * 2 * (8 * 128 + 128 * 8)
    assert result["total"] == read(base, max_seq_len=256).model().num_params() + result["trainable"]
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert len(adapter) == 4 * 2 * 2 and all("lora_A" in k or "lora_B" in k for k in adapter)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (8, 16, 0.05)
    assert sorted(config["target_modules"]) == ["wq", "wv"]

    # The last checkpoint holds every weight: the base ones bit for bit as pretrained, the adapters trained.
    saved = out / "saved.pt"
    dcp_to_torch_save(checkpoints(out)[-1], saved)
    trained = {k.removeprefix("model.").removeprefix("base_model.model.").replace(".base_layer", ""): v
               for k, v in torch.load(saved, weights_only=False)["model"].items()}
    pretrained = load_checkpoint(base)["model"]
    for name, tensor in pretrained.items():
        assert torch.equal(trained[name], tensor), name
    lora_b = [v for k, v in trained.items() if "lora_B" in k]
    assert len(lora_b) == 8 and all(v.abs().max() > 0 for v in lora_b)  # B starts at zero: these trained


def test_merged_model_equals_base_plus_adapter(lora, base, corpus):
    from peft import PeftModel

    result, out = lora
    merged = read(result["model"], tokenizer=corpus[0])
    assert merged.tokenizer_sha256 == load_checkpoint(base)["tokenizer_sha256"]
    # The adapter as PEFT itself loads it onto the base model.
    with_adapter = PeftModel.from_pretrained(read(base, max_seq_len=256).model(), out / "adapter").eval()
    tokens = torch.randint(0, 512, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = with_adapter(tokens)
        assert (expected - read(base, max_seq_len=256).model()(tokens)).abs().max() > 1e-3  # the adapter does something
        torch.testing.assert_close(merged.model()(tokens), expected, atol=1e-5, rtol=0)


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(seed_tasks, corpus, base, tmp_path):
    settings = dict(max_steps=6, val_size=25)
    whole = finetune(lora_config(seed_tasks, corpus, base, tmp_path / "whole", **settings))
    first = finetune(lora_config(seed_tasks, corpus, base, tmp_path / "cut", stop_at=3, **settings))
    assert train_state(checkpoints(tmp_path / "cut")[-1])["step"] == 3
    rest = finetune(lora_config(seed_tasks, corpus, base, tmp_path / "cut", **settings))
    assert first["losses"] + rest["losses"] == pytest.approx(whole["losses"], abs=1e-6)
    assert load_file(tmp_path / "cut" / "adapter" / "adapter_model.safetensors").keys() == \
        load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors").keys()


# --- sampling a fine-tuned model ---

def test_sample_instruction_wraps_the_template_and_every_strategy_runs(lora, corpus, seed_tasks, capsys):
    result, _ = lora
    _, held = split_examples(read_examples(seed_tasks), 25, seed=42)
    example = next(e for e in held if e["input"])
    sp = spm.SentencePieceProcessor(model_file=str(corpus[0]))
    model = read(result["model"]).model()
    prompt = [sp.bos_id()] + sp.encode(alpaca_prompt(example["instruction"], example["input"]))
    greedy = generate(model, prompt, 30, eos_id=sp.eos_id())
    common = ["--checkpoint", str(result["model"]), "--tokenizer", str(corpus[0]), "--max-new-tokens", "30",
              "--instruction", example["instruction"], "--input", example["input"]]
    capsys.readouterr()
    sample_main(common + ["--temperature", "0"])
    assert capsys.readouterr().out == sp.decode(greedy[len(prompt):]) + "\n---\n"  # the response only
    best, _ = beam_search(model, prompt, 30, 3, eos_id=sp.eos_id())
    sample_main(common + ["--beams", "3"])
    assert capsys.readouterr().out == sp.decode(best[len(prompt):]) + "\n---\n"
    for strategy in (["--temperature", "0.8"], ["--top-k", "20"], ["--top-p", "0.9"]):
        sample_main(common + strategy + ["--instruction", "Say hello."])  # a batch: with and without input
        printed = capsys.readouterr().out.split("---\n")
        assert len(printed) == 3 and printed[-1] == "" and "### Response" not in printed[0]


# --- full fine-tuning: one process against two FSDP ranks ---

def test_full_mode_on_two_fsdp_ranks_matches_one_process(seed_tasks, corpus, base, tmp_path):
    settings = dict(mode="full", max_steps=3, val_size=25, lr=1e-3)
    single = finetune(lora_config(seed_tasks, corpus, base, tmp_path / "one", **settings))
    assert single["trainable"] == single["total"] == read(base, max_seq_len=256).model().num_params()
    assert single["val_losses"][-1][1] < single["val_losses"][0][1]
    # As `make finetune` passes them: the paths by their flags, every other setting as KEY=VALUE.
    cfg = asdict(lora_config(seed_tasks, corpus, base, tmp_path / "two", **settings))
    args = [f"{flag}={cfg.pop(key)}" for flag, key in FLAGS.items()]
    args += [f"{key}={value}" for key, value in cfg.items() if value is not None]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "trainer.finetune", *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(1 accumulated × 2 ranks)" in done.stdout
    rows = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows if "loss" in r] == pytest.approx(single["losses"], abs=1e-5)
    assert [r["val_loss"] for r in rows if "val_loss" in r] == \
        pytest.approx([loss for _, loss in single["val_losses"]], abs=1e-5)
    two = load_checkpoint(tmp_path / "two" / "model.pt")["model"]
    for name, tensor in load_checkpoint(single["model"])["model"].items():
        torch.testing.assert_close(two[name], tensor, atol=1e-5, rtol=1e-4)


# --- CLI and memory plan ---

def test_cli_settings_and_defaults_are_alpaca_loras():
    cfg = parse_config(["--data", "d.json", "--checkpoint", "m.pt", "--out-dir", "out", "merge=true", "max_steps=5",
                        "lr=1e-4", "mode=full"])
    assert (cfg.data, cfg.checkpoint, cfg.merge, cfg.max_steps, cfg.lr) == ("d.json", "m.pt", True, 5, 1e-4)
    assert (cfg.out_dir, cfg.mode, cfg.tokenizer) == ("out", "full", None)
    cfg = parse_config([])
    assert (cfg.mode, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets) == ("lora", 8, 16, 0.05, "wq,wv")
    assert (cfg.batch_size, cfg.epochs, cfg.max_len, cfg.weight_decay, cfg.warmup_ratio) == (128, 3.0, 512, 0.0, 0.03)


def test_finetune_command_refuses_a_bad_value_before_torch_and_prints_its_settings():
    assert refused("trainer.finetune", "mode=half") == "error: mode='half': expected one of lora, full"
    assert refused("trainer.finetune", "--data", "d.json", "epochs=abc") == "error: epochs='abc': expected a number"
    assert "unknown setting max-len" in refused("trainer.finetune", "max-len=8")
    shown = printed_settings("trainer.finetune", "--data", "d.json", "--out-dir", "o", "merge=true", "val_size=8")
    assert (shown["data"], shown["out_dir"], shown["merge"], shown["val_size"]) == ("d.json", "o", True, 8)
    assert (shown["mode"], shown["lora_r"]) == ("lora", 8)


def test_plan_gives_lora_memory_of_7b_on_24_and_80_gb(capsys):
    model_main(["--preset", "7B", "--plan", "1", "--lora", "--seq-len", "512"])
    printed = capsys.readouterr().out
    assert "LoRA fine-tuning on one GPU" in printed and "4,194,304 trainable" in printed
    small, large = (lora_plan(PRESETS["7B"], 512, gib, 8, ("wq", "wv")) for gib in (24, 80))
    assert small["adapter parameters"] == 32 * 2 * (8 * 4096 + 4096 * 8)  # A and B of wq and wv per block
    assert small["frozen weights"] == 2 * 6_738_415_616 and small["adapters"] == 16 * 4_194_304
    # LoRA fits both GPUs, full fine-tuning (16 B per parameter before activations) neither.
    assert 1 <= small["max micro-batch"] < small["max micro-batch + AC"] < large["max micro-batch + AC"]
    assert not small["full fine-tuning fits"] and not large["full fine-tuning fits"]
    assert large["full fine-tuning"] > 16 * 6_738_415_616
