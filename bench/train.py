"""Training throughput: our trainer's step (trainer.pretrain.train) against a plain nanoGPT-style loop
(the same model, AdamW, batches sliced from the memory-mapped tokens) on the same config.

Shards come from botchan.en.txt under ../shared/data, tokenized by a SentencePiece BPE model trained
here. `python -m bench.train` measures the `small` preset on the CPU with one thread (the machine is
shared; one thread is what stays comparable); `--device cuda --preset 1B` also reports MFU on a GPU.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from bench.common import SHARED_DATA
from tokenizer.shards import ShardReader, ShardWriter, tokenizer_hash
from trainer.config import TrainConfig
from trainer.data import find_shards
from trainer.model import Transformer, preset
from trainer.pretrain import PEAK_FLOPS, peak_flops, train


def make_shards(root: Path, vocab_size: int) -> Path:
    lines = [line.strip() for line in (SHARED_DATA / "text" / "botchan.en.txt").read_text(encoding="utf-8").splitlines()
             if line.strip()]
    docs = ["\n".join(lines[i:i + 20]) for i in range(0, len(lines), 20)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(docs), model_prefix=str(root / "tok"), vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, num_threads=1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(root / "tok.model"))
    shards = root / "shards"
    shards.mkdir()
    for name, part in [("train-00000", docs[:-20]), ("val-00000", docs[-20:])]:
        with ShardWriter(shards / name, sp.vocab_size(), tokenizer_hash(root / "tok.model")) as writer:
            for doc in part:
                writer.add_document([sp.bos_id()] + sp.encode(doc))
    return shards


def ours(cfg: TrainConfig, skip: int) -> list[float]:
    """Per-step tokens/s of the trainer, read back from its log."""
    train(cfg)
    rows = [json.loads(line) for line in (Path(cfg.out_dir) / "log.jsonl").read_text().splitlines()]
    return [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][skip:]


def plain_loop(cfg: TrainConfig, vocab_size: int, device: torch.device, skip: int) -> list[float]:
    """nanoGPT's loop: random windows from the memmap, forward, backward, AdamW step."""
    torch.manual_seed(cfg.seed)
    data = ShardReader(find_shards(cfg.data_dir, "train")[0].prefix).tokens
    model = Transformer(preset(cfg.preset, vocab_size=vocab_size, max_seq_len=cfg.seq_len)).to(device)
    if cfg.compile:
        for block in model.layers:
            block.compile()  # as the trainer does, so that both sides run the same kernels
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    rates = []
    for _ in range(cfg.max_steps):
        started = time.perf_counter()
        ix = np.random.randint(0, len(data) - cfg.seq_len - 1, cfg.batch_size)
        rows = torch.from_numpy(np.stack([data[i:i + cfg.seq_len + 1] for i in ix]).astype(np.int64)).to(device)
        with autocast:
            _, loss = model(rows[:, :-1], rows[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        rates.append(cfg.batch_size * cfg.seq_len / (time.perf_counter() - started))
    return rates[skip:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab", type=int, default=2000, help="tokenizer vocabulary trained for the bench")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--compile", action="store_true", help="torch.compile each block (trainer and plain loop)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best median of each side counts")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    skip = 3  # first steps warm allocators (and compile, on GPU)
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(Path(tmp), args.vocab)
        vocab_size = find_shards(shards, "train")[0].vocab_size
        best_ours, best_plain = 0.0, 0.0
        for r in range(args.rounds):
            cfg = TrainConfig(preset=args.preset, data_dir=str(shards), out_dir=f"{tmp}/run{r}", seq_len=args.seq_len,
                              batch_size=args.batch_size, max_steps=args.steps + skip, eval_interval=0,
                              eval_batches=1, log_interval=10**9, device=args.device,
                              compile=args.compile)
            best_ours = max(best_ours, statistics.median(ours(cfg, skip)))
            best_plain = max(best_plain, statistics.median(plain_loop(cfg, vocab_size, device, skip)))
    model = Transformer(preset(args.preset, vocab_size=vocab_size, max_seq_len=args.seq_len))
    print(f"preset {args.preset} ({model.num_params():,} parameters, vocabulary {vocab_size}), "
          f"{args.batch_size}×{args.seq_len} tokens/step, {args.device}{', compiled blocks' if args.compile else ''}")
    print(f"trainer step: {best_ours:,.0f} tokens/s; plain loop: {best_plain:,.0f} tokens/s; "
          f"ratio ours/plain = {best_ours / best_plain:.2f} (target ≥ 0.95)")
    peak = peak_flops(device)
    if peak:
        mfu = model.flops_per_token(args.seq_len) * best_ours / peak
        print(f"MFU {mfu:.1%} of {peak / 1e12:.0f} TFLOP/s bf16 ({torch.cuda.get_device_name(device)})")
    elif device.type == "cuda":
        print(f"MFU: peak FLOP/s of {torch.cuda.get_device_name(device)} not known (known: {sorted(PEAK_FLOPS)})")


if __name__ == "__main__":
    main()
