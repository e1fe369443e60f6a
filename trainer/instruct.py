"""Instruction tuning as Stanford Alpaca did: what `python -m trainer.finetune` runs (its settings:
trainer.config.FinetuneConfig).

Data: Alpaca's JSON (a list) or JSONL of {"instruction", "input", "output"}, or Self-Instruct's tasks
({"instruction", "instances": [{"input", "output"}, …]}, one example per instance). Each example becomes
BOS + Alpaca's prompt (with or without input) + response + EOS, cut at `max_len` tokens, and only the
response and its EOS carry loss (the prompt's labels are IGNORE_INDEX, as Alpaca's train.py). Micro-batches
are padded on the right to their longest example: causal attention never lets a real token see padding.

`mode=lora` (alpaca-lora): the model is frozen and PEFT's LoRA adapters on `lora_targets` train; the run
saves them with PEFT's `save_pretrained` (out_dir/adapter), and `merge=true` folds them into the weights and
writes out_dir/model.pt in our format (trainer.sample and trainer.convert read it). `mode=full` (Alpaca):
every weight trains, under torchrun with FSDP2 or DDP, and out_dir/model.pt is written. Both use the
pretraining machinery of trainer.pretrain: the same model build (meta device, FSDP, activation checkpointing),
AdamW, gradient clipping, DCP checkpoints under out_dir/checkpoint/step-N/ (a rerun resumes from the newest,
with the same next losses) and the consolidated export.

The loss of an optimizer step is the mean over every response token of its global batch (all micro-batches
and ranks), so any world size and accumulation give the same step.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import sentencepiece as spm
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.nn.parallel import DistributedDataParallel

from tokenizer.shards import tokenizer_hash
from trainer.config import FinetuneConfig
from trainer.convert import read
from trainer.data import WindowOrder
from trainer.pretrain import (
    Run,
    build_model,
    checkpoints,
    clip_gradients,
    export_model,
    init_processes,
    lr_at,
    make_optimizer,
    restore_state,
    save_state,
)

IGNORE_INDEX = -100  # label of a position without loss (F.cross_entropy's default ignore_index, Alpaca's)

# Alpaca's two templates, verbatim from tatsu-lab/stanford_alpaca train.py (PROMPT_DICT).
PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
PROMPT_NO_INPUT = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Response:")


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The prompt a model is trained on and later asked with: the template with input only where there is one."""
    if input:
        return PROMPT_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


# --- data: records, prompts, tokens ---

def read_examples(path: str | Path) -> list[dict]:
    """{"instruction", "input", "output"} per example. Records without an instruction or output are skipped,
    counted and reported; a file that is neither JSON nor JSONL is an error naming the line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not a JSON object ({e})") from e
    examples, skipped = [], 0
    for record in records:
        instances = record.get("instances", [record]) if isinstance(record, dict) else []
        for instance in instances:
            instruction, output = record.get("instruction"), instance.get("output")
            if not isinstance(instruction, str) or not instruction.strip() or not isinstance(output, str):
                skipped += 1
                continue
            examples.append({"instruction": instruction, "input": instance.get("input") or "", "output": output})
    if skipped:
        print(f"{path}: skipped {skipped} records without an instruction or output", file=sys.stderr)
    if not examples:
        raise ValueError(f"{path}: no instruction examples")
    return examples


def split_examples(examples: list[dict], val_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out): `val_size` examples drawn with the seed, the rest in file order."""
    if val_size >= len(examples):
        raise ValueError(f"val_size={val_size} leaves no training examples of {len(examples)}")
    held = set(torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))[:val_size].tolist())
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def tokenize(sp: spm.SentencePieceProcessor, example: dict, max_len: int) -> tuple[list[int], list[int]] | None:
    """(token ids, labels): BOS + prompt + response + EOS, labels IGNORE_INDEX over BOS and prompt; None when
    the prompt leaves no response token within max_len."""
    prompt = [sp.bos_id()] + sp.encode(alpaca_prompt(example["instruction"], example["input"]))
    response = sp.encode(example["output"]) + [sp.eos_id()]
    ids = (prompt + response)[:max_len]
    if len(ids) <= len(prompt):
        return None
    return ids, [IGNORE_INDEX] * len(prompt) + ids[len(prompt):]


def tokenize_all(sp: spm.SentencePieceProcessor, examples: list[dict], max_len: int,
                 name: str) -> list[tuple[list[int], list[int]]]:
    out, cut = [], 0
    for example in examples:
        tokens = tokenize(sp, example, max_len)
        if tokens is None:
            cut += 1
        else:
            out.append(tokens)
    if cut:
        print(f"{name}: skipped {cut} examples whose prompt fills max_len={max_len}", file=sys.stderr)
    return out


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), both (batch, longest - 1): targets are the labels shifted by one, IGNORE_INDEX on padding."""
    width = max(len(ids) for ids, _ in examples)
    tokens = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, lab) in enumerate(examples):
        tokens[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(lab)] = torch.tensor(lab)
    return tokens[:, :-1], labels[:, 1:]


class InstructionLoader:
    """Shuffled global batches of examples with a resumable cursor, as trainer.data.TrainLoader: each epoch
    is a seeded permutation whose ragged tail is dropped; rank r takes its micro-batches of every batch."""

    def __init__(self, examples: list[tuple[list[int], list[int]]], batch_size: int, micro_batch_size: int,
                 pad_id: int, tokenizer_sha256: bytes, seed: int, rank: int, world: int):
        per_step = micro_batch_size * world
        if batch_size % per_step or batch_size > len(examples):
            raise ValueError(f"batch_size={batch_size} must be a multiple of micro_batch_size × ranks = {per_step} "
                             f"and at most the {len(examples)} training examples")
        self.examples, self.batch_size, self.micro_batch_size = examples, batch_size, micro_batch_size
        self.pad_id, self.tokenizer_sha256 = pad_id, tokenizer_sha256
        self.seed, self.rank, self.world = seed, rank, world
        self.grad_accum = batch_size // per_step
        self.epoch, self.position = 0, 0
        self._order = WindowOrder(len(examples), seed, self.epoch)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.examples) // self.batch_size

    def next_step(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches of the next global batch."""
        if self.position + self.batch_size > len(self.examples):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = WindowOrder(len(self.examples), self.seed, self.epoch)
        batches = []
        for micro in range(self.grad_accum):
            first = self.position + (micro * self.world + self.rank) * self.micro_batch_size
            chosen = [self.examples[self._order[p]] for p in range(first, first + self.micro_batch_size)]
            batches.append(collate(chosen, self.pad_id))
        self.position += self.batch_size
        return batches

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "examples": len(self.examples)}

    def load_state_dict(self, state: dict, allow_shard_change: bool = False) -> None:
        if state["examples"] != len(self.examples) and not allow_shard_change:
            raise ValueError(f"the checkpoint was trained on {state['examples']} examples, the data now has "
                             f"{len(self.examples)}: resuming would change the order of everything that follows")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = WindowOrder(len(self.examples), self.seed, self.epoch)


# --- loss, one step, held-out loss ---

def response_loss_sum(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the positions whose target is not IGNORE_INDEX (the response tokens)."""
    logits = model(tokens)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def finetune_step(run: Run, batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float) -> tuple[float, float]:
    """One optimizer step on this rank's micro-batches; (mean response-token loss of the global batch, grad norm)."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    count = torch.tensor(float(sum(int((y != IGNORE_INDEX).sum()) for _, y in batches)), device=run.device)
    if run.world > 1:
        dist.all_reduce(count)
    loss_sum = torch.zeros((), device=run.device)
    for micro, (x, y) in enumerate(batches):
        x, y = x.to(run.device), y.to(run.device)
        last = micro == len(batches) - 1
        sync = run.step_model.no_sync() if isinstance(run.step_model, DistributedDataParallel) and not last \
            else contextlib.nullcontext()
        with sync, run.autocast:
            summed = response_loss_sum(run.step_model, x, y)
        # DDP and FSDP average gradients over ranks: × world makes it the global sum / global count.
        (summed * run.world / count).backward()
        loss_sum += summed.detach()
    if run.world > 1:
        dist.all_reduce(loss_sum)
    grad_norm = clip_gradients(run.model, run.cfg.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return (loss_sum / count).item(), grad_norm.item()


@torch.no_grad()
def held_out_loss(model: nn.Module, examples: list[tuple[list[int], list[int]]], micro_batch_size: int, pad_id: int,
                  device: torch.device, autocast=contextlib.nullcontext()) -> float:
    """Mean cross-entropy per response token over `examples` (every rank computes all of it)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for first in range(0, len(examples), micro_batch_size):
        x, y = collate(examples[first:first + micro_batch_size], pad_id)
        with autocast:
            total += response_loss_sum(model, x.to(device), y.to(device)).item()
        count += int((y != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / count


# --- setup, the loop ---

@dataclass
class Finetune:
    run: Run  # what trainer.pretrain's functions use: model (a PeftModel in lora mode), optimizer, loader, step
    held_out: list  # tokenized held-out examples
    max_steps: int
    trainable: int  # parameters that train
    total: int  # parameters of the model, adapters included


def load_base(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """The base weights into a model built by trainer.pretrain.build_model (possibly sharded by FSDP, possibly
    wrapped for activation checkpointing): each rank keeps its share of the full tensors."""
    options = StateDictOptions(full_state_dict=True) if dist.is_initialized() else None
    set_model_state_dict(model, state_dict, options=options)


def setup(cfg: FinetuneConfig) -> Finetune:
    if cfg.mode == "lora" and cfg.activation_checkpointing:
        raise ValueError("activation_checkpointing is for mode=full: the adapter's names would carry the wrapper's")
    train_cfg = cfg.train_config()
    rank, world, device = init_processes(train_cfg)
    torch.manual_seed(cfg.seed)
    weights = read(cfg.checkpoint, tokenizer=cfg.tokenizer)
    if weights.tokenizer is None:
        raise ValueError(f"no tokenizer for {cfg.checkpoint}: set tokenizer")
    sp = spm.SentencePieceProcessor(model_file=str(weights.tokenizer))
    if sp.vocab_size() != weights.cfg.vocab_size:
        raise ValueError(f"{weights.tokenizer} has {sp.vocab_size()} tokens, the model {weights.cfg.vocab_size}")
    train_examples, held_examples = split_examples(read_examples(cfg.data), cfg.val_size, cfg.seed)
    pad_id = sp.eos_id()  # what a pad position holds does not matter: nothing real attends to it, no loss on it
    loader = InstructionLoader(tokenize_all(sp, train_examples, cfg.max_len, "training data"), cfg.batch_size,
                               cfg.micro_batch_size, pad_id, tokenizer_hash(weights.tokenizer), cfg.seed, rank, world)
    held_out = tokenize_all(sp, held_examples, cfg.max_len, "held-out data")

    model_cfg = replace(weights.cfg, max_seq_len=max(weights.cfg.max_seq_len, cfg.max_len))
    bf16 = cfg.mixed_precision and device.type == "cuda" and torch.cuda.is_bf16_supported()
    fsdp = cfg.mode == "full" and cfg.parallelism == "fsdp" and world > 1
    model = build_model(train_cfg, model_cfg, device, bf16, fsdp)
    load_base(model, weights.state_dict)
    del weights
    if cfg.mode == "lora":
        from peft import LoraConfig, get_peft_model  # imports transformers (seconds): only where LoRA runs

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.lora_targets.split(","))
        model = get_peft_model(model, lora)  # freezes every base weight
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = total = sum(p.numel() for p in model.parameters())
    step_model = model
    if world > 1 and not fsdp:
        step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                             forward_sync_buffers=False)
    peak_lr = cfg.lr if cfg.lr is not None else 3e-4 if cfg.mode == "lora" else 2e-5
    max_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * loader.steps_per_epoch))
    warmup = math.ceil(cfg.warmup_ratio * max_steps)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and not fsdp else contextlib.nullcontext()
    optimizer = make_optimizer(model, train_cfg, peak_lr, fused=device.type == "cuda")  # frozen weights: no state
    run = Run(replace(train_cfg, max_steps=max_steps, warmup_steps=warmup), model_cfg, model, step_model, optimizer,
              loader, device, rank, world, fsdp, autocast, loader.grad_accum, peak_lr, warmup)
    return Finetune(run, held_out, max_steps, trainable, total)


def merge_and_export(job: Finetune) -> Path:
    """Fold the adapters into the weights (W + B·A·alpha/r) and write the model as pretraining exports it."""
    job.run.model = job.run.model.merge_and_unload()
    return export_model(job.run)


def open_log(job: Finetune, cfg: FinetuneConfig, resumed: bool):
    """Rank 0's log.jsonl (a resumed run continues it), after the settings file and the opening line; None on
    the other ranks."""
    run = job.run
    if not run.master:
        return None
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    print(f"{cfg.mode}: trainable parameters {job.trainable:,} of {job.total:,} "
          f"({job.trainable / job.total:.4%}); {len(run.loader.examples)} training and {len(job.held_out)} "
          f"held-out examples, {cfg.batch_size} per step ({run.grad_accum} accumulated × {run.world} ranks), "
          f"{job.max_steps} steps" + (f", resumed at step {run.step}" if resumed else ""))
    return open(out / "log.jsonl", "a" if run.step else "w")


def log_step(run: Run, log, loss: float, lr: float, grad_norm: float, seconds: float) -> None:
    log.write(json.dumps({"step": run.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "dt": seconds}) + "\n")
    log.flush()
    if run.step % run.cfg.log_interval == 0 or run.step == run.cfg.max_steps:
        print(f"step {run.step}/{run.cfg.max_steps}: loss {loss:.4f}, lr {lr:.2e}, grad norm {grad_norm:.2f}, "
              f"{seconds:.3f} s")


def validate(job: Finetune, log, val_losses: list[tuple[int, float]]) -> None:
    """Appends (step, held-out response loss) when examples are held out, and logs it on rank 0."""
    if not job.held_out:
        return
    run = job.run
    loss = held_out_loss(run.model, job.held_out, run.loader.micro_batch_size, run.loader.pad_id, run.device,
                         run.autocast)
    val_losses.append((run.step, loss))
    if log:
        log.write(json.dumps({"step": run.step, "val_loss": loss}) + "\n")
        log.flush()
        print(f"step {run.step}: held-out response loss {loss:.4f}")


def save_outputs(job: Finetune, cfg: FinetuneConfig) -> dict:
    """lora: the adapter in PEFT's format (and, with merge, model.pt of the merged weights); full: model.pt."""
    outputs = {"adapter": None, "model": None}
    if cfg.mode == "full":
        outputs["model"] = export_model(job.run)
        return outputs
    outputs["adapter"] = Path(cfg.out_dir) / "adapter"
    if job.run.master:
        job.run.model.save_pretrained(outputs["adapter"])  # adapter_config.json + adapter_model.safetensors
    if cfg.merge:
        outputs["model"] = merge_and_export(job)
    return outputs


def finetune(cfg: FinetuneConfig) -> dict:
    """Run (or resume) fine-tuning; returns this call's losses, the held-out losses (step, loss) and the outputs."""
    job = setup(cfg)
    run = job.run
    previous = checkpoints(cfg.out_dir) if cfg.resume else []
    if previous:
        restore_state(run, previous[-1])
    log = open_log(job, cfg, resumed=bool(previous))
    losses, val_losses, seconds = [], [], []
    if run.step == 0:
        validate(job, log, val_losses)
    end = min(job.max_steps, cfg.stop_at or job.max_steps)
    while run.step < end:
        started = time.perf_counter()
        lr = lr_at(run.step, run.peak_lr, run.warmup, job.max_steps, 0.0)
        loss, grad_norm = finetune_step(run, run.loader.next_step(), lr)
        seconds.append(time.perf_counter() - started)
        losses.append(loss)
        if log:
            log_step(run, log, loss, lr, grad_norm, seconds[-1])
        if (cfg.eval_interval and run.step % cfg.eval_interval == 0) or run.step == job.max_steps:
            validate(job, log, val_losses)
        if run.step % cfg.ckpt_interval == 0 or run.step == end:
            save_state(run)
    result = {"losses": losses, "val_losses": val_losses, "trainable": job.trainable, "total": job.total,
              "seconds_per_step": sum(seconds) / len(seconds) if seconds else None, **save_outputs(job, cfg)}
    if log:
        log.close()
    if dist.is_initialized():
        dist.destroy_process_group()
    return result
