"""LLaMA-1 (Touvron et al. 2023) in one file, with the names of Meta's reference code.

Pre-norm RMSNorm, SwiGLU feed-forward, rotary position embeddings (interleaved pairs, as Meta's
`apply_rotary_emb`, done with real arithmetic so it also runs where complex tensors do not), causal
attention through `scaled_dot_product_attention`, no biases, untied embeddings.

`python -m trainer.model --preset 7B` prints a preset's config and parameter count, built on the
`meta` device so that no memory is allocated; `--plan 8 --gpu-memory 80` prints what each of 8 GPUs
of 80 GiB holds under DDP and FSDP, with and without activation checkpointing; `--lora` adds the memory of
LoRA fine-tuning on one 24 GiB and one 80 GiB GPU beside full fine-tuning.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor


@dataclass
class ModelConfig:
    dim: int = 4096  # model width d
    n_layers: int = 32  # transformer blocks
    n_heads: int = 32  # query heads; head_dim = dim // n_heads
    n_kv_heads: int | None = None  # key/value heads for grouped-query attention; None = n_heads (LLaMA-1)
    vocab_size: int = 32000  # tokenizer vocabulary (LLaMA's SentencePiece has 32000)
    multiple_of: int = 256  # SwiGLU hidden size is rounded up to a multiple of this
    norm_eps: float = 1e-6  # RMSNorm epsilon
    rope_theta: float = 10000.0  # RoPE base
    max_seq_len: int = 2048  # longest context; sizes the RoPE table and the KV cache
    lr: float = 3e-4  # peak learning rate the paper used for this size

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden(self) -> int:
        # Meta: 2/3 of 4d keeps SwiGLU's three matrices at the FLOPs of a 4d two-matrix MLP.
        hidden = int(2 * 4 * self.dim / 3)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


# The paper's sizes (Table 2) and small ones that train on a CPU in minutes (their names are also
# trainer.config.PresetName, which the commands check before torch is imported).
PRESETS: dict[str, ModelConfig] = {
    "7B": ModelConfig(dim=4096, n_layers=32, n_heads=32, lr=3e-4),
    "13B": ModelConfig(dim=5120, n_layers=40, n_heads=40, lr=3e-4),
    "33B": ModelConfig(dim=6656, n_layers=60, n_heads=52, lr=1.5e-4),
    "65B": ModelConfig(dim=8192, n_layers=80, n_heads=64, lr=1.5e-4),
    "1B": ModelConfig(dim=2048, n_layers=22, n_heads=16, lr=4e-4),  # a GPU-sized preset for MFU checks
    "small": ModelConfig(dim=256, n_layers=6, n_heads=8, multiple_of=64, max_seq_len=256, lr=1e-3),
    "tiny": ModelConfig(dim=128, n_layers=4, n_heads=4, multiple_of=32, max_seq_len=128, lr=2e-3),
}


def preset(name: str, **overrides) -> ModelConfig:
    return replace(PRESETS[name], **overrides)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 for the mean of squares: bf16 loses too much precision there.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_table(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position·θ^(-2i/d), shape (max_seq_len, head_dim // 2)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(max_seq_len).float(), freqs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x0, x1), (x2, x3), … of x (batch, seq, heads, head_dim), Meta's layout."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, cache: tuple[torch.Tensor, torch.Tensor] | None = None, start_pos: int = 0,
                mask: torch.Tensor | None = None):
        bsz, seqlen, _ = x.shape
        q = self.wq(x).view(bsz, seqlen, self.n_heads, self.head_dim)
        k = self.wk(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(bsz, seqlen, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            # Write this step's keys/values in place, attend over everything written so far.
            cache_k, cache_v = cache
            cache_k[:bsz, start_pos:start_pos + seqlen] = k
            cache_v[:bsz, start_pos:start_pos + seqlen] = v
            k, v = cache_k[:bsz, :start_pos + seqlen], cache_v[:bsz, :start_pos + seqlen]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (batch, heads, seq, head_dim)
        if self.n_kv_heads != self.n_heads:
            repeats = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
        if mask is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif start_pos == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # Decoding: query i sits at start_pos + i and sees keys up to and including itself.
            mask = torch.ones(seqlen, k.shape[2], dtype=torch.bool, device=x.device).tril(start_pos)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_hidden)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, cos, sin, cache=None, start_pos: int = 0, mask=None):
        h = x + self.attention(self.attention_norm(x), cos, sin, cache, start_pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # Not saved in checkpoints: recomputed from the config by init_weights.
        self.register_buffer("rope_cos", torch.empty(cfg.max_seq_len, cfg.head_dim // 2), persistent=False)
        self.register_buffer("rope_sin", torch.empty(cfg.max_seq_len, cfg.head_dim // 2), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """RoPE tables, RMSNorm gains 1, matrices N(0, 0.02) (GPT-2 style: Meta did not publish LLaMA's init).

        With `seed`, each matrix is drawn at its full shape, in parameter order, from one generator seeded
        with it, and a sharded (FSDP) parameter keeps only its own shard: any world size gets the same
        weights, and no more than one full matrix exists at a time. Without, the global RNG is used."""
        cos, sin = rope_table(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)
        device = self.rope_cos.device
        generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
        for param in self.parameters():
            if param.dim() < 2:
                param.fill_(1.0)
            elif generator is None:
                param.normal_(mean=0.0, std=0.02)
            else:
                full = torch.empty(param.shape, device=device).normal_(mean=0.0, std=0.02, generator=generator)
                if isinstance(param, DTensor):
                    full = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
                param.copy_(full)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None,
                caches: list | None = None, start_pos: int = 0, mask: torch.Tensor | None = None):
        """Logits (batch, seq, vocab); with `targets`, also the mean cross-entropy. `mask` (boolean, broadcast to
        batch, heads, seq, keys), where given, replaces the causal mask: batched decoding hides padding with it."""
        seqlen = tokens.shape[1]
        cos = self.rope_cos[start_pos:start_pos + seqlen]
        sin = self.rope_sin[start_pos:start_pos + seqlen]
        h = self.tok_embeddings(tokens)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, caches[i] if caches is not None else None, start_pos, mask)
        logits = self.output(self.norm(h)).float()
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> list:
        cfg = self.cfg
        shape = (batch_size, max_len or cfg.max_seq_len, cfg.n_kv_heads or cfg.n_heads, cfg.head_dim)
        dtype = dtype or self.output.weight.dtype
        device = self.output.weight.device
        return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                for _ in self.layers]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N for the matrices plus attention's 12·layers·dim·seq (PaLM, appendix B)."""
        matrices = self.num_params() - self.tok_embeddings.weight.numel()
        return 6 * matrices + 12 * self.cfg.n_layers * self.cfg.dim * seq_len


# --- memory plan: what one GPU holds per training step ---
#
# Per parameter (N of them), AdamW with fp32 master weights: weights 4 B, gradients 4 B, Adam's m and
# v 8 B; DDP keeps all of it on every GPU (its buckets are the gradients: gradient_as_bucket_view), FSDP
# keeps 1/W of it. Working copies: DDP's autocast keeps a bf16 copy of every matrix from forward to
# backward (2 B/param); FSDP gathers bf16 parameters of the root (embeddings, output, final norm: never
# resharded) and of up to 2 blocks (the current and the prefetched one), and the bf16 gradients plus the
# fp32 reduce-scatter buffers (6 B/param) of the largest of those units.
#
# Activations: the tensors autograd saves, per token, read off this file's forward with bf16 compute
# (d = dim, f = ffn_hidden, h = n_heads, v = vocab_size; r = bytes of the residual stream: 2 under
# FSDP's bf16 parameters, 4 under DDP's autocast, where the embedding output is fp32):
#   RMSNorm        4d (fp32 input for the mean of squares) + r·d (normed) + 2d (bf16 output, the
#                  linears' input) + 4 (fp32 reciprocal RMS)
#   attention      6d (q, k after RoPE, v) + 2d (output, which wo reads in place) + 4h (log-sum-exp)
#   feed-forward   8f (w1 out, its SiLU, w3 out, their product)
#   per layer      2·RMSNorm + attention + feed-forward = (12 + 2r)·d + 8f + 4h + 8
#   head           RMSNorm + 16 (token ids, targets) + 4v (fp32 log-softmax) saved, plus 10v transient at
#                  the loss (bf16 logits, their fp32 copy, the fp32 gradient of the logits)
# With activation checkpointing per block, a block saves only its input (r·d) and one block's activations
# are alive again while it is recomputed in backward:  L·r·d + per_layer + head  instead of  L·per_layer + head.
# tests/test_trainer.py checks the per-layer and head terms against the bytes autograd really saves with
# bf16 parameters (the FSDP column). The DDP column assumes CUDA's autocast, which runs attention in bf16
# (CPU's autocast runs it in fp32, so it cannot be checked on a CPU).

GIB = 1024 ** 3
USABLE = 0.9  # of GPU memory: the rest goes to the CUDA context, NCCL buffers and allocator fragmentation


def saved_bytes_per_token(cfg: ModelConfig, residual_bytes: int) -> tuple[int, int]:
    """Bytes autograd saves per token: (one transformer block, the head: final norm and loss)."""
    d, f, h, v = cfg.dim, cfg.ffn_hidden, cfg.n_heads, cfg.vocab_size
    norm = 4 * d + residual_bytes * d + 2 * d + 4
    return 2 * norm + 6 * d + 2 * d + 4 * h + 8 * f, norm + 16 + 4 * v


def activation_bytes_per_token(cfg: ModelConfig, residual_bytes: int, checkpointing: bool) -> int:
    layer, head = saved_bytes_per_token(cfg, residual_bytes)
    layers = cfg.n_layers * residual_bytes * cfg.dim + layer if checkpointing else cfg.n_layers * layer
    return layers + head + 10 * cfg.vocab_size


def memory_plan(cfg: ModelConfig, world: int, seq_len: int, gpu_gib: float) -> dict[str, dict[str, float]]:
    """Per-GPU bytes for DDP / FSDP, with and without activation checkpointing, and the largest micro-batch."""
    with torch.device("meta"):
        model = Transformer(cfg)
    n = model.num_params()
    block = sum(p.numel() for p in model.layers[0].parameters())
    root = n - cfg.n_layers * block
    plans = {}
    for name, shards, residual in (("DDP", 1, 4), ("FSDP", world, 2)):
        working = 2 * n if name == "DDP" else 2 * (root + 2 * block) + 6 * max(root, block)
        for checkpointing in (False, True):
            row = {"weights": 4 * n / shards, "gradients": 4 * n / shards, "optimizer": 8 * n / shards,
                   "working copies": working,
                   "activations / sequence": seq_len * activation_bytes_per_token(cfg, residual, checkpointing)}
            row["fixed"] = row["weights"] + row["gradients"] + row["optimizer"] + row["working copies"]
            free = USABLE * gpu_gib * GIB - row["fixed"]
            row["max micro-batch"] = max(0, int(free // row["activations / sequence"]))
            plans[name + (" + AC" if checkpointing else "")] = row
    return plans


def print_plan(cfg: ModelConfig, world: int, seq_len: int, gpu_gib: float, tokens_per_step: int) -> None:
    plans = memory_plan(cfg, world, seq_len, gpu_gib)
    print(f"per-GPU memory, GiB: {world} GPUs of {gpu_gib:g} GiB ({USABLE:.0%} usable), seq_len {seq_len}, "
          f"bf16 compute, fp32 weights and AdamW state")
    print(f"{'':26s}" + "".join(f"{name:>12s}" for name in plans))
    for key in ("weights", "gradients", "optimizer", "working copies", "fixed", "activations / sequence"):
        print(f"{key:26s}" + "".join(f"{row[key] / GIB:12.2f}" for row in plans.values()))
    print(f"{'max micro-batch':26s}" + "".join(f"{row['max micro-batch']:12d}" for row in plans.values()))
    sequences = tokens_per_step // seq_len
    line = f"{'grad_accum for ' + format(tokens_per_step, ',') + ' tok':26s}"
    for row in plans.values():
        # The largest micro-batch that fits and divides the global batch evenly.
        fits = [b for b in range(row["max micro-batch"], 0, -1) if sequences % (world * b) == 0]
        line += f"{(f'{fits[0]}x{sequences // (world * fits[0])}' if fits else '-'):>12s}"
    print(line + "   (micro-batch x accumulation)")


# LoRA fine-tuning (trainer.finetune) on one GPU: the frozen model in bf16 (2 B/param: no gradients, no
# optimizer state, no fp32 master copy), the adapters in fp32 with gradients and AdamW state (16 B/param).
# Activations as the FSDP column's (bf16 residual stream): autograd still saves what backward needs to carry
# gradients down to the lowest adapter; an upper bound, as frozen linears need not keep their inputs.

def lora_parameters(cfg: ModelConfig, rank: int, targets: tuple[str, ...]) -> int:
    """A (rank × in) and B (out × rank) per targeted linear layer of every block."""
    with torch.device("meta"):
        block = TransformerBlock(cfg)
    return cfg.n_layers * sum(rank * (m.in_features + m.out_features) for name, m in block.named_modules()
                              if isinstance(m, nn.Linear) and name.split(".")[-1] in targets)


def lora_plan(cfg: ModelConfig, seq_len: int, gpu_gib: float, rank: int, targets: tuple[str, ...]) -> dict[str, float]:
    """Bytes on one GPU for LoRA fine-tuning, the largest micro-batch without and with activation checkpointing,
    and what full fine-tuning would need on that one GPU (weights, gradients, AdamW state, one sequence)."""
    with torch.device("meta"):
        n = Transformer(cfg).num_params()
    adapters = lora_parameters(cfg, rank, targets)
    row = {"adapter parameters": adapters, "parameters": n, "frozen weights": 2 * n, "adapters": 16 * adapters}
    free = USABLE * gpu_gib * GIB - row["frozen weights"] - row["adapters"]
    for key, checkpointing in (("", False), (" + AC", True)):
        row["activations / sequence" + key] = seq_len * activation_bytes_per_token(cfg, 2, checkpointing)
        row["max micro-batch" + key] = max(0, int(free // row["activations / sequence" + key]))
    full = memory_plan(cfg, 1, seq_len, gpu_gib)["FSDP + AC"]  # one GPU: nothing sharded
    row["full fine-tuning"] = full["fixed"] + full["activations / sequence"]
    row["full fine-tuning fits"] = full["max micro-batch"] > 0
    return row


def print_lora_plan(cfg: ModelConfig, seq_len: int, rank: int, targets: tuple[str, ...],
                    gpus_gib: tuple[float, ...] = (24, 80)) -> None:
    rows = {gib: lora_plan(cfg, seq_len, gib, rank, targets) for gib in gpus_gib}
    first = rows[gpus_gib[0]]
    print(f"\nLoRA fine-tuning on one GPU, GiB: rank {rank} on {','.join(targets)}: {first['adapter parameters']:,} "
          f"trainable parameters ({first['adapter parameters'] / first['parameters']:.3%} of {first['parameters']:,});"
          f" seq_len {seq_len}, frozen weights bf16, adapters fp32 + AdamW")
    print(f"{'GPU GiB':>8s}{'frozen':>9s}{'adapters':>10s}{'act/seq':>9s}{'AC act/seq':>12s}{'max micro-batch':>17s}"
          f"{'with AC':>9s}{'full FT, 1 GPU':>16s}")
    for gib, row in rows.items():
        print(f"{gib:>8g}{row['frozen weights'] / GIB:9.2f}{row['adapters'] / GIB:10.3f}"
              f"{row['activations / sequence'] / GIB:9.2f}{row['activations / sequence + AC'] / GIB:12.2f}"
              f"{row['max micro-batch']:17d}{row['max micro-batch + AC']:9d}{row['full fine-tuning'] / GIB:10.1f}"
              f"{' fits' if row['full fine-tuning fits'] else ' no':>6s}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="7B", choices=sorted(PRESETS))
    parser.add_argument("--plan", type=int, metavar="GPUS", help="print the per-GPU memory plan for this many GPUs")
    parser.add_argument("--gpu-memory", type=float, default=80, help="GiB per GPU, for --plan")
    parser.add_argument("--seq-len", type=int, default=2048, help="for --plan")
    parser.add_argument("--tokens-per-step", type=int, default=4 * 1024 ** 2, help="for --plan (LLaMA: 4M)")
    parser.add_argument("--lora", action="store_true",
                        help="with --plan: also LoRA fine-tuning on one 24 GiB and one 80 GiB GPU (trainer.finetune)")
    parser.add_argument("--lora-r", type=int, default=8, help="adapter rank, for --lora (alpaca-lora: 8)")
    parser.add_argument("--lora-targets", default="wq,wv", help="adapted layers, for --lora")
    args = parser.parse_args(argv)
    cfg = PRESETS[args.preset]
    if args.plan:
        print_plan(cfg, args.plan, args.seq_len, args.gpu_memory, args.tokens_per_step)
        if args.lora:
            print_lora_plan(cfg, args.seq_len, args.lora_r, tuple(args.lora_targets.split(",")))
        return
    with torch.device("meta"):
        model = Transformer(cfg)
    for key, value in asdict(model.cfg).items():
        print(f"{key:12s} {value}")
    print(f"{'ffn_hidden':12s} {model.cfg.ffn_hidden}")
    n = model.num_params()
    print(f"parameters   {n:,} ({n / 1e9:.2f}B)")


if __name__ == "__main__":
    main()
