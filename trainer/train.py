"""Pretrain LLaMA on token shards: `python -m trainer.train --config trainer/configs/tiny.json [key=value …]`.

Single process on CPU or one GPU, or several GPUs under `torchrun` (DDP). The run directory holds
`checkpoint.pt` (replaced atomically; a rerun resumes from it), `log.jsonl` and `loss.png`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainer.data import TrainLoader, val_batches
from trainer.model import ModelConfig, Transformer, preset


@dataclass
class TrainConfig:
    preset: str = "tiny"  # model size from trainer.model.PRESETS
    data_dir: str = "runs/local/shards"  # directory of train-*.idx / val-*.idx shards
    out_dir: str = "runs/local/pretrain"  # checkpoint, log and loss curve go here
    seq_len: int = 128  # tokens of context per training window
    batch_size: int = 16  # windows per micro-batch per process
    grad_accum: int = 1  # micro-batches summed into one optimizer step
    max_steps: int = 300  # optimizer steps in the whole run; the schedule spans these
    stop_at: int | None = None  # end this invocation after this step (a time-limited job slot); resume later
    lr: float | None = None  # peak learning rate; None takes the preset's
    warmup_steps: int | None = None  # linear warmup; None = the paper's 2000, capped at 10 % of max_steps
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak (LLaMA: 10 %)
    weight_decay: float = 0.1  # AdamW decay, applied to matrices only
    beta1: float = 0.9  # AdamW β1
    beta2: float = 0.95  # AdamW β2
    grad_clip: float = 1.0  # global gradient-norm clip
    eval_interval: int = 50  # steps between validation losses (0: only at the end)
    eval_batches: int = 8  # validation batches per evaluation
    ckpt_interval: int = 100  # steps between checkpoints (one is always written at the end)
    log_interval: int = 10  # steps between printed lines (every step goes to log.jsonl)
    seed: int = 1337  # model init and data order
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto: cuda when available, else cpu
    resume: bool = True  # continue from out_dir/checkpoint.pt when it exists


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


def save_atomic(obj, path: Path) -> None:
    # Write beside, then rename: a crash mid-write leaves the previous checkpoint intact.
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def model_from_checkpoint(ckpt: dict) -> Transformer:
    model = Transformer(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model


@torch.no_grad()
def evaluate(model, cfg: TrainConfig, device, autocast) -> float:
    model.eval()
    losses = []
    for x, y in val_batches(cfg.data_dir, cfg.seq_len, cfg.batch_size, cfg.eval_batches):
        with autocast:
            losses.append(model(x.to(device), y.to(device))[1].item())
    model.train()
    return sum(losses) / len(losses)


def plot_losses(log_path: Path, png_path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train", linewidth=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns this call's per-step training losses and (step, validation loss) pairs."""
    ddp = "RANK" in os.environ
    if ddp:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if cfg.device == "auto":
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    master = rank == 0
    out = Path(cfg.out_dir)
    if master:
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    loader = TrainLoader(cfg.data_dir, cfg.seq_len, cfg.batch_size, cfg.seed, rank, world)
    base = preset(cfg.preset)
    model_cfg = preset(cfg.preset, vocab_size=loader.vocab_size, max_seq_len=max(cfg.seq_len, base.max_seq_len))
    model = Transformer(model_cfg).to(device)
    peak_lr = cfg.lr if cfg.lr is not None else model_cfg.lr
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(2000, cfg.max_steps // 10)
    optimizer = make_optimizer(model, cfg, peak_lr, fused=device.type == "cuda")

    step = 0
    ckpt_path = out / "checkpoint.pt"
    if cfg.resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        if ckpt["tokenizer_sha256"] != loader.tokenizer_sha256.hex():
            raise ValueError(f"{ckpt_path} was trained with another tokenizer than the shards in {cfg.data_dir}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        loader.load_state_dict(ckpt["data"])
        torch.set_rng_state(ckpt["rng"]["cpu"].cpu())
        if device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), device)
        step = ckpt["step"]
        if master:
            print(f"resumed from {ckpt_path} at step {step}")

    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if ddp:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())  # float32 on CPU
    peak = peak_flops(device)
    flops_per_token = raw_model.flops_per_token(cfg.seq_len)
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * world

    def checkpoint() -> None:
        if not master:
            return
        rng = {"cpu": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        save_atomic({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                     "data": loader.state_dict(), "rng": rng, "step": step,
                     "model_config": asdict(model_cfg), "train_config": asdict(cfg),
                     "tokenizer_sha256": loader.tokenizer_sha256.hex()}, ckpt_path)

    # A fresh run starts a new log; a resumed one continues it.
    log = open(out / "log.jsonl", "a" if step else "w") if master else None
    losses, val_losses = [], []

    def validate() -> None:
        if master:
            val_losses.append((step, evaluate(raw_model, cfg, device, autocast)))
            log.write(json.dumps({"step": step, "val_loss": val_losses[-1][1]}) + "\n")
            print(f"step {step}: validation loss {val_losses[-1][1]:.4f}")

    if master:
        print(f"{cfg.preset}: {raw_model.num_params():,} parameters, {len(loader.windows):,} training windows, "
              f"{tokens_per_step:,} tokens/step, device {device}")
    if step == 0:
        validate()  # the curve starts from the untrained model
    model.train()
    end = min(cfg.max_steps, cfg.stop_at or cfg.max_steps)
    while step < end:
        started = time.perf_counter()
        lr = lr_at(step, peak_lr, warmup, cfg.max_steps, cfg.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            x, y = loader.next_batch()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            # Under DDP, all-reduce gradients only on the last micro-batch.
            sync = contextlib.nullcontext() if not ddp or micro == cfg.grad_accum - 1 else model.no_sync()
            with sync, autocast:
                _, loss = model(x, y)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        if ddp:
            dist.all_reduce(loss_sum)  # log the loss of the whole global batch, not rank 0's share
            loss_sum /= world
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = (loss_sum / cfg.grad_accum).item()  # also waits for the GPU, so the timing is real
        dt = time.perf_counter() - started
        losses.append(loss_value)
        if master:
            tokens_per_s = tokens_per_step / dt
            row = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm.item(),
                   "tokens_per_s": tokens_per_s, "dt": dt}
            if peak:
                row["mfu"] = flops_per_token * tokens_per_s / (peak * world)
            log.write(json.dumps(row) + "\n")
            if step % cfg.log_interval == 0 or step == cfg.max_steps:
                mfu = f", MFU {row['mfu']:.1%}" if peak else ""
                print(f"step {step}/{cfg.max_steps}: loss {loss_value:.4f}, lr {lr:.2e}, "
                      f"grad norm {row['grad_norm']:.2f}, {tokens_per_s:,.0f} tokens/s{mfu}")
        if (cfg.eval_interval and step % cfg.eval_interval == 0) or step == cfg.max_steps:
            validate()
        if step % cfg.ckpt_interval == 0 or step == end:
            checkpoint()
        if log:
            log.flush()
    if master:
        log.close()
        plot_losses(out / "log.jsonl", out / "loss.png")
    if ddp:
        dist.destroy_process_group()
    return {"losses": losses, "val_losses": val_losses, "checkpoint": ckpt_path, "loss_curve": out / "loss.png"}


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """`--config FILE.json` then `key=value` overrides, each parsed as JSON where it can be."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="JSON file of TrainConfig fields")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    values = json.loads(Path(args.config).read_text()) if args.config else {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; known: {sorted(known)}")
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(argv)
    if not Path(cfg.data_dir).is_dir():
        raise SystemExit(f"no shard directory {cfg.data_dir}: run `make shards` first")
    result = train(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"checkpoint: {result['checkpoint']}")
        print(f"loss curve: {result['loss_curve']}")


if __name__ == "__main__":
    main()
