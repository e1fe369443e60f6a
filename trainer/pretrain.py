"""Pretraining LLaMA on token shards: what `python -m trainer.train` runs (its settings: trainer.config.TrainConfig).

Single process on CPU or one GPU, or several processes under `torchrun`: DDP (every rank holds the
model) or FSDP2 (parameters, gradients and AdamW state sharded per transformer block), optionally with
activation checkpointing per block. The model is built on the `meta` device and materialised only as
each rank's share, then initialised from the seed (the same weights at any world size).

The run directory holds `checkpoint/step-N/` (a `torch.distributed.checkpoint` written by all ranks,
loadable at another world size, plus `train_state.json`: step, data cursor (per source, from a mixture),
shard list; a rerun resumes from the newest), `model.pt` (consolidated weights for inference, written at the end:
`{"model": state dict, "model_config", "train_config", "tokenizer_sha256", "step"}`, read by
`load_checkpoint` / `model_from_checkpoint`), `log.jsonl`, `loss.png` and `report.html` (trainer.report).
`out_dir` must be a filesystem every rank sees. The data is one shard folder (`data_dir`, trainer.data) or
LLaMA's mixture of sources (`mixture`, trainer.mixture).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from trainer.config import TrainConfig
from trainer.data import TrainLoader, val_batches
from trainer.mixture import MixtureLoader
from trainer.model import ModelConfig, Transformer, preset
from trainer.report import (
    log_step,
    log_validation,
    mixture_table,
    open_log,
    plot_losses,
    print_mixture,
    write_report,
)

# DCP warns on every save and load by one process that it assumes one process: that is the intent here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


# Dense bf16 peak FLOP/s by device name, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def lr_at(step: int, peak: float, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Linear warmup to `peak`, then cosine down to `min_ratio · peak` at `max_steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float, fused: bool) -> torch.optim.AdamW:
    # Decay the matrices (linear and embedding weights), not the RMSNorm gains.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The consolidated weights file (`model.pt`) a run exports for inference."""
    return torch.load(path, map_location=map_location, weights_only=True)


def model_from_checkpoint(ckpt: dict) -> Transformer:
    model = Transformer(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model


# --- setup: processes, model, optimizer ---

@dataclass
class Run:
    """What one invocation of `train` holds; `setup` builds it, the functions below use it."""
    cfg: TrainConfig
    model_cfg: ModelConfig
    model: Transformer  # the model itself (sharded in place under FSDP): evaluation, state dicts
    step_model: nn.Module  # what training steps run through: DDP's wrapper, or `model`
    optimizer: torch.optim.AdamW
    loader: TrainLoader | MixtureLoader
    device: torch.device
    rank: int
    world: int
    fsdp: bool
    autocast: contextlib.AbstractContextManager  # bf16 autocast for DDP / one process on CUDA, else a no-op
    grad_accum: int
    peak_lr: float
    warmup: int
    step: int = 0

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.cfg.out_dir) / "checkpoint"

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.seq_len * self.grad_accum * self.world


def init_processes(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device); under torchrun also the process group."""
    rank, world = 0, 1
    if "RANK" in os.environ:
        nccl = torch.cuda.is_available() and cfg.device != "cpu"
        # NCCL bound to this rank's GPU up front, rather than guessed from the global rank
        local_gpu = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if nccl else None
        dist.init_process_group("nccl" if nccl else "gloo", device_id=local_gpu)
        rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    if device.type == "cuda" and device.index is None:  # plain "cuda": this process's GPU under torchrun
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    return rank, world, device


def build_model(cfg: TrainConfig, model_cfg: ModelConfig, device: torch.device, bf16: bool, fsdp: bool) -> Transformer:
    """Built on `meta` (no memory), wrapped for activation checkpointing, sharded under FSDP, then only
    this rank's share is allocated on `device` and initialised from the seed: under FSDP no rank ever
    holds the whole model."""
    with torch.device("meta"):
        model = Transformer(model_cfg)
    for i, block in enumerate(model.layers):
        if cfg.activation_checkpointing:
            model.layers[i] = block = checkpoint_wrapper(block, preserve_rng_state=False)  # nothing random to replay
        if cfg.compile:
            block.compile()  # per block, as torchtitan: one graph reused by every layer
    if fsdp:
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
                  else MixedPrecisionPolicy())
        for i, block in enumerate(model.layers):
            # Backward needs the last block again at once: keep it gathered rather than gather it twice.
            fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=i < len(model.layers) - 1)
        fully_shard(model, mesh=mesh, mp_policy=policy)  # the root: embeddings, final norm, output
    model.to_empty(device=device)
    model.init_weights(seed=cfg.seed)
    return model


def grad_accumulation(cfg: TrainConfig, world: int) -> int:
    if cfg.global_batch_tokens is None:
        return cfg.grad_accum
    per_micro_batch = cfg.batch_size * cfg.seq_len * world
    if cfg.global_batch_tokens % per_micro_batch:
        raise ValueError(f"global_batch_tokens={cfg.global_batch_tokens} is not a multiple of batch_size × seq_len × "
                         f"world size = {cfg.batch_size} × {cfg.seq_len} × {world} = {per_micro_batch}")
    return cfg.global_batch_tokens // per_micro_batch


def setup(cfg: TrainConfig) -> Run:
    rank, world, device = init_processes(cfg)
    torch.manual_seed(cfg.seed)
    loader = (MixtureLoader(cfg.mixture, cfg.seq_len, cfg.batch_size, cfg.seed, rank, world) if cfg.mixture
              else TrainLoader(cfg.data_dir, cfg.seq_len, cfg.batch_size, cfg.seed, rank, world))
    base = preset(cfg.preset)
    model_cfg = preset(cfg.preset, vocab_size=loader.vocab_size, max_seq_len=max(cfg.seq_len, base.max_seq_len))
    bf16 = cfg.mixed_precision and device.type == "cuda" and torch.cuda.is_bf16_supported()
    fsdp = cfg.parallelism == "fsdp" and world > 1
    model = build_model(cfg, model_cfg, device, bf16, fsdp)
    step_model = model
    if world > 1 and not fsdp:
        # The buckets are the gradients (no second copy); the RoPE tables are equal everywhere: no sync per forward.
        step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                             gradient_as_bucket_view=True, forward_sync_buffers=False)
    peak_lr = cfg.lr if cfg.lr is not None else model_cfg.lr
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(2000, cfg.max_steps // 10)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and not fsdp
                else contextlib.nullcontext())  # FSDP casts through its policy
    return Run(cfg, model_cfg, model, step_model, make_optimizer(model, cfg, peak_lr, fused=device.type == "cuda"),
               loader, device, rank, world, fsdp, autocast, grad_accumulation(cfg, world), peak_lr, warmup)


# --- checkpoints: sharded training state, consolidated weights ---

def checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a `.tmp` one was cut short and is ignored)."""
    return sorted(p for p in (Path(out_dir) / "checkpoint").glob("step-*") if not p.name.endswith(".tmp"))


def train_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "train_state.json").read_text())


def save_state(run: Run) -> None:
    """Every rank writes its shards of the model and AdamW state (DCP); rank 0 adds the step, data cursor
    and configs, then publishes the directory by renaming it and drops the previous checkpoint."""
    final = run.checkpoint_dir / f"step-{run.step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if run.master and tmp.exists():
        shutil.rmtree(tmp)  # cut short earlier, perhaps at another world size: no stale shard files
    if dist.is_initialized():
        dist.barrier()
    model_state, optimizer_state = get_state_dict(run.model, run.optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state, "rng": torch.get_rng_state()}, checkpoint_id=tmp,
             no_dist=not dist.is_initialized())
    if run.master:
        state = {"step": run.step, "data": run.loader.state_dict(), "world_size": run.world,
                 "model_config": asdict(run.model_cfg), "train_config": asdict(run.cfg),
                 "tokenizer_sha256": run.loader.tokenizer_sha256.hex()}
        (tmp / "train_state.json").write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(run.cfg.out_dir)[:-1]:
            shutil.rmtree(old)
    if dist.is_initialized():
        dist.barrier()  # nobody reads or writes checkpoints until this one is published


def restore_state(run: Run, checkpoint: Path) -> None:
    """Load a checkpoint written at any world size: DCP reshards the model and AdamW state to this one."""
    state = train_state(checkpoint)
    if state["tokenizer_sha256"] != run.loader.tokenizer_sha256.hex():
        raise ValueError(f"{checkpoint} was trained with another tokenizer than the shards of "
                         f"{run.cfg.mixture or run.cfg.data_dir}")
    run.loader.load_state_dict(state["data"], allow_shard_change=run.cfg.allow_shard_change)
    model_state, optimizer_state = get_state_dict(run.model, run.optimizer)  # templates, filled in place
    loaded = {"model": model_state, "optimizer": optimizer_state, "rng": torch.get_rng_state()}
    dcp.load(loaded, checkpoint_id=checkpoint, no_dist=not dist.is_initialized())
    set_state_dict(run.model, run.optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"])
    torch.set_rng_state(loaded["rng"])
    run.step = state["step"]


def export_model(run: Run) -> Path:
    """`model.pt`: the whole model's fp32 weights on rank 0's CPU, gathered one parameter at a time."""
    path = Path(run.cfg.out_dir) / "model.pt"
    full = StateDictOptions(full_state_dict=True, cpu_offload=True) if dist.is_initialized() else None
    weights = get_model_state_dict(run.model, options=full)  # names without the FSDP/checkpoint wrappers
    if run.master:
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"model": {k: v.cpu() for k, v in weights.items()}, "model_config": asdict(run.model_cfg),
                    "train_config": asdict(run.cfg), "tokenizer_sha256": run.loader.tokenizer_sha256.hex(),
                    "step": run.step}, tmp)
        os.replace(tmp, path)  # a crash mid-write leaves the previous export intact
    return path


# --- one step, evaluation, the loop ---

def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()  # FSDP: each rank has the norm of its shards; combine them
    torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, norm)
    return norm


def train_step(run: Run, lr: float) -> tuple[float, float]:
    """One optimizer step over grad_accum micro-batches; (mean loss over the global batch, gradient norm)."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=run.device)
    for micro in range(run.grad_accum):
        x, y = run.loader.next_batch()
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        # DDP all-reduces only on the last micro-batch. FSDP reduce-scatters every one: skipping would keep
        # whole unsharded gradients, the memory FSDP exists to save.
        last = micro == run.grad_accum - 1
        sync = run.step_model.no_sync() if isinstance(run.step_model, DistributedDataParallel) and not last \
            else contextlib.nullcontext()
        with sync, run.autocast:
            loss = run.step_model(x, y)[1]  # the logits are not kept alive through backward
        (loss / run.grad_accum).backward()
        loss_sum += loss.detach()
    if run.world > 1:
        dist.all_reduce(loss_sum)  # log the loss of the whole global batch, not rank 0's share
        loss_sum /= run.world
    grad_norm = clip_gradients(run.model, run.cfg.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    return (loss_sum / run.grad_accum).item(), grad_norm.item()  # .item() also waits for the GPU


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Mean loss on the fixed validation batches of each validation set (a mixture: each source's), and under
    "all" their mean weighted by share. Every rank runs it: under FSDP each forward gathers parameters from all
    ranks."""
    run.model.eval()
    losses, weights = {}, {}
    for name, (weight, directory) in run.loader.validation_sets().items():
        batches = val_batches(directory, run.cfg.seq_len, run.cfg.batch_size, run.cfg.eval_batches,
                              run.loader.tokenizer_sha256)
        with run.autocast:
            values = [run.model(x.to(run.device), y.to(run.device))[1].item() for x, y in batches]
        losses[name], weights[name] = sum(values) / len(values), weight
    run.model.train()
    if "all" not in losses:
        losses["all"] = sum(weights[n] * loss for n, loss in losses.items()) / sum(weights.values())
    return losses


def validate(run: Run, log) -> tuple[int, float]:
    losses = evaluate(run)
    log_validation(run, log, losses)
    return run.step, losses["all"]


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns this call's per-step training losses and (step, validation loss) pairs."""
    run = setup(cfg)
    previous = checkpoints(cfg.out_dir) if cfg.resume else []
    if previous:
        restore_state(run, previous[-1])
        if run.master:
            print(f"resumed from {previous[-1]} at step {run.step}")
    log = open_log(run)
    losses, val_losses = [], []
    if run.step == 0:
        val_losses.append(validate(run, log))  # the curve starts from the untrained model
    end = min(cfg.max_steps, cfg.stop_at or cfg.max_steps)
    while run.step < end:
        started = time.perf_counter()
        lr = lr_at(run.step, run.peak_lr, run.warmup, cfg.max_steps, cfg.min_lr_ratio)
        loss, grad_norm = train_step(run, lr)
        losses.append(loss)
        if log:
            log_step(run, log, loss, lr, grad_norm, time.perf_counter() - started, peak_flops(run.device))
        if (cfg.eval_interval and run.step % cfg.eval_interval == 0) or run.step == cfg.max_steps:
            val_losses.append(validate(run, log))
        if run.step % cfg.ckpt_interval == 0 or run.step == end:
            save_state(run)
    weights = export_model(run)
    out = Path(cfg.out_dir)
    print_mixture(run)
    if log:
        log.close()
        plot_losses(out / "log.jsonl", out / "loss.png")
        write_report(out, mixture_table(run), getattr(run.loader, "left_out", {}), run.step)
    if dist.is_initialized():
        dist.destroy_process_group()
    return {"losses": losses, "val_losses": val_losses, "checkpoint": checkpoints(out)[-1], "model": weights,
            "loss_curve": out / "loss.png", "report": out / "report.html"}
