"""Generate text from a checkpoint: `python -m trainer.sample --checkpoint runs/local/pretrain/checkpoint.pt
--tokenizer models/tokenizer/tokenizer.model --prompt "Once upon a time"`.

Greedy (temperature 0), temperature, top-k and top-p (nucleus) sampling; keys and values of past
positions are kept in a cache so that each new token costs one position of compute.
"""

from __future__ import annotations

import argparse

import sentencepiece as spm
import torch

from tokenizer.shards import tokenizer_hash
from trainer.model import Transformer
from trainer.train import load_checkpoint, model_from_checkpoint


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of `logits` (batch, vocab)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        # Keep the smallest set of most likely tokens whose probability reaches top_p.
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # the tokens before this one already reach top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: Transformer, prompt: list[int], max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True) -> list[int]:
    """Prompt plus up to `max_new_tokens` generated ids (fewer if `eos_id` comes)."""
    model.eval()
    device = model.output.weight.device
    total = min(model.cfg.max_seq_len, len(prompt) + max_new_tokens)
    tokens = list(prompt)
    caches = model.new_kv_cache(1, total) if use_cache else None
    pos = 0
    while len(tokens) < total:
        if use_cache:
            # The whole prompt on the first call, then one new token at a time.
            logits = model(torch.tensor([tokens[pos:]], device=device), caches=caches, start_pos=pos)
            pos = len(tokens)
        else:
            logits = model(torch.tensor([tokens], device=device))
        token = int(next_token(logits[:, -1], temperature, top_k, top_p, generator))
        tokens.append(token)
        if token == eos_id:
            break
    return tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/local/pretrain/checkpoint.pt")
    parser.add_argument("--tokenizer", default="models/tokenizer/tokenizer.model")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    ckpt = load_checkpoint(args.checkpoint)
    if tokenizer_hash(args.tokenizer).hex() != ckpt["tokenizer_sha256"]:
        raise SystemExit(f"{args.tokenizer} is not the tokenizer {args.checkpoint} was trained with")
    model = model_from_checkpoint(ckpt)
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    prompt = [sp.bos_id()] + sp.encode(args.prompt)
    generator = torch.Generator().manual_seed(args.seed)
    for _ in range(args.num_samples):
        ids = generate(model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                       eos_id=sp.eos_id(), generator=generator)
        print(sp.decode(ids[1:]))
        print("---")


if __name__ == "__main__":
    main()
