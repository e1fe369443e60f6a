"""Generate text: `python -m trainer.sample --checkpoint runs/local/pretrain/model.pt
--tokenizer models/tokenizer/tokenizer.model --prompt "Once upon a time" [--prompt …] [--beams 4]`.

The checkpoint is any format trainer.convert reads (ours, a Meta directory, a Hugging Face directory). On a
GPU the model runs in bfloat16, on the CPU in float32. Several prompts decode together as one batch: they
are padded on the left and the padding is masked out (RoPE only sees relative positions, so a shifted
prompt scores the same). Greedy (temperature 0), temperature, top-k and top-p (nucleus) sampling, or beam
search; keys and values of past positions are kept in a cache so that each new token costs one position.

`--instruction "…" [--input "…"]` asks an instruction-tuned model (`python -m trainer.finetune`): the text is wrapped in
Alpaca's template, the model writes until EOS, and only the response is printed.
"""

from __future__ import annotations

import argparse
import sys

import sentencepiece as spm
import torch

from trainer.convert import read
from trainer.instruct import alpaca_prompt
from trainer.model import Transformer


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
    return torch.multinomial(logits.float().softmax(-1), 1, generator=generator).squeeze(-1)


def attention_mask(valid: torch.Tensor, queries: int, start_pos: int) -> torch.Tensor:
    """(batch, 1, queries, keys) for queries at start_pos… over keys 0…start_pos+queries-1: causal, and padding
    hidden. A position always sees itself, so that a padding query has a key and its softmax no NaN."""
    keys = start_pos + queries
    causal = torch.ones(queries, keys, dtype=torch.bool, device=valid.device).tril(start_pos)
    itself = torch.zeros_like(causal)
    itself[:, start_pos:].fill_diagonal_(True)
    return (causal & valid[:, None, :keys] | itself)[:, None]


@torch.no_grad()
def generate_batch(model: Transformer, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                   top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
                   generator: torch.Generator | None = None, use_cache: bool = True) -> list[list[int]]:
    """Each prompt plus up to `max_new_tokens` generated ids (fewer where `eos_id` comes, or at max_seq_len)."""
    model.eval()
    device = model.output.weight.device
    width = max(map(len, prompts))
    if width > model.cfg.max_seq_len:
        raise ValueError(f"a prompt of {width} tokens is longer than the model's context ({model.cfg.max_seq_len})")
    total = min(model.cfg.max_seq_len, width + max_new_tokens)
    if width >= total:
        return [list(p) for p in prompts]
    tokens = torch.zeros(len(prompts), total, dtype=torch.long, device=device)
    valid = torch.zeros(len(prompts), total, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt):width] = torch.tensor(prompt, dtype=torch.long)
        valid[row, width - len(prompt):width] = True
    valid[:, width:] = True
    padded = not bool(valid.all())
    caches = model.new_kv_cache(len(prompts), total) if use_cache else None
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    pos = 0
    for cur in range(width, total):
        # With the cache, the whole prompt on the first call, then one new position at a time.
        start = pos if use_cache else 0
        mask = attention_mask(valid, cur - start, start) if padded else None
        logits = model(tokens[:, start:cur], caches=caches, start_pos=start, mask=mask)
        pos = cur
        token = next_token(logits[:, -1], temperature, top_k, top_p, generator)
        tokens[:, cur] = torch.where(done, eos_id if eos_id is not None else 0, token)
        if eos_id is not None:
            done |= token == eos_id
            if bool(done.all()):
                total = cur + 1
                break
    out = []
    for row, prompt in enumerate(prompts):
        ids = tokens[row, width:total].tolist()
        if eos_id in ids:
            ids = ids[:ids.index(eos_id) + 1]
        out.append(list(prompt) + ids)
    return out


def generate(model: Transformer, prompt: list[int], max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True) -> list[int]:
    """Prompt plus up to `max_new_tokens` generated ids (fewer if `eos_id` comes)."""
    return generate_batch(model, [prompt], max_new_tokens, temperature, top_k, top_p, eos_id, generator,
                          use_cache)[0]


def reorder_caches(caches: list[tuple[torch.Tensor, torch.Tensor]], rows: torch.Tensor, length: int) -> None:
    """Cache rows 0…len(rows)-1 take the keys and values of `rows` (may repeat) at the first `length` positions."""
    for cache_k, cache_v in caches:
        cache_k[:len(rows), :length] = cache_k[rows, :length]
        cache_v[:len(rows), :length] = cache_v[rows, :length]


Finished = tuple[float, float, list[int]]  # a hypothesis that ended: (ranking score, log-probability, generated ids)


def beam_rank(logprob: float, length: int, length_penalty: float) -> float:
    """How beam search ranks a hypothesis of `length` generated tokens."""
    return logprob / length ** length_penalty


def best_reachable(logprob: float, length: int, steps: int, length_penalty: float) -> float:
    """The best rank a live hypothesis can still reach: log-probabilities only fall as it grows, and a positive
    penalty divides by the longest length (`steps`)."""
    return beam_rank(logprob, steps if length_penalty > 0 else length, length_penalty)


def extend_beams(scores: torch.Tensor, logprobs: torch.Tensor, sequences: torch.Tensor, beams: int, eos_id: int | None,
                 length_penalty: float) -> tuple[list[int], list[int], list[float], list[Finished]]:
    """The `beams` best extensions of the hypotheses by summed log-probability, best first: (parent rows, tokens,
    scores) of those that go on, and (ranking score, log-probability, generated ids) of those that end in `eos_id`."""
    vocab = logprobs.shape[-1]
    candidates = (scores[:, None] + logprobs).flatten()
    top_scores, top_index = candidates.topk(min(2 * beams, candidates.numel()))
    rows, tokens, kept_scores, finished = [], [], [], []
    for score, index in zip(top_scores.tolist(), top_index.tolist()):
        row, token = divmod(index, vocab)
        if token == eos_id:
            ids = sequences[row].tolist() + [token]
            finished.append((beam_rank(score, len(ids), length_penalty), score, ids))
        else:
            rows.append(row)
            tokens.append(token)
            kept_scores.append(score)
        if len(rows) == beams:
            break
    return rows, tokens, kept_scores, finished


@torch.no_grad()
def beam_search(model: Transformer, prompt: list[int], max_new_tokens: int, beams: int,
                length_penalty: float = 1.0, eos_id: int | None = None) -> tuple[list[int], float]:
    """The best continuation found by beam search and its log-probability: prompt plus generated ids.

    `beams` hypotheses are extended by every token; the `beams` best by summed log-probability go on, those
    ending in `eos_id` are set aside. Finished hypotheses are ranked by log-probability / length**length_penalty
    (length in generated tokens; 0: plain log-probability, positive favours longer ones, negative shorter)."""
    model.eval()
    device = model.output.weight.device
    total = min(model.cfg.max_seq_len, len(prompt) + max_new_tokens)
    steps = total - len(prompt)
    if steps <= 0:
        return list(prompt), 0.0
    caches = model.new_kv_cache(beams, total)
    prompt_logits = model(torch.tensor([prompt], device=device), caches=caches)
    # Every beam starts from the prompt's keys and values.
    reorder_caches(caches, torch.zeros(beams, dtype=torch.long, device=device), len(prompt))
    logprobs = prompt_logits[:, -1].float().log_softmax(-1)  # (1, vocab): one live hypothesis at first
    scores = torch.zeros(1, device=device)
    sequences = torch.empty(1, 0, dtype=torch.long, device=device)
    finished: list[Finished] = []
    for step in range(steps):
        rows, tokens, kept_scores, ended = extend_beams(scores, logprobs, sequences, beams, eos_id, length_penalty)
        finished += ended
        if finished and rows and max(finished)[0] >= best_reachable(kept_scores[0], step + 1, steps, length_penalty):
            break  # no live hypothesis can overtake the best finished one
        if not rows or step == steps - 1:
            finished += [(beam_rank(s, step + 1, length_penalty), s, sequences[r].tolist() + [t])
                         for r, t, s in zip(rows, tokens, kept_scores)]
            break
        parents = torch.tensor(rows, device=device)
        sequences = torch.cat([sequences[parents], torch.tensor(tokens, device=device)[:, None]], dim=1)
        scores = torch.tensor(kept_scores, device=device)
        pos = len(prompt) + step
        reorder_caches(caches, parents, pos)  # each kept hypothesis carries on its parent's cache
        logprobs = model(sequences[:, -1:], caches=caches, start_pos=pos)[:, -1].float().log_softmax(-1)
    _, logprob, ids = max(finished)
    return list(prompt) + ids, logprob


def default_device_and_dtype() -> tuple[torch.device, torch.dtype]:
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cpu"), torch.float32


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/local/pretrain/model.pt",
                        help="our checkpoint or weights file, a Meta directory or a Hugging Face directory")
    parser.add_argument("--tokenizer", help="SentencePiece model (default: the one beside a Meta or HF checkpoint)")
    parser.add_argument("--prompt", action="append", help="repeat for a batch of prompts")
    parser.add_argument("--prompt-file", help="one prompt a line")
    parser.add_argument("--instruction", action="append",
                        help="an instruction for a fine-tuned model, wrapped in Alpaca's template; repeat for a batch")
    parser.add_argument("--input", action="append",
                        help="context for the instruction at the same position (Alpaca's template with input)")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--beams", type=int, default=0, help="beam search with this many beams (ignores sampling)")
    parser.add_argument("--length-penalty", type=float, default=1.0,
                        help="beam search ranks by log-probability / length**this")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="default: cuda when present, else cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="default: bfloat16 on a GPU, float32 on the CPU")
    return parser.parse_args(argv)


def prompt_texts(args: argparse.Namespace) -> tuple[list[str], int]:
    """The texts to continue (--prompt, --prompt-file's lines, then each --instruction in Alpaca's template)
    and how many of them, at the end, are instructions."""
    texts = list(args.prompt or [])
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            texts += [line.rstrip("\n") for line in f]
    instructions = args.instruction or []
    inputs = args.input or []
    if len(inputs) > len(instructions):
        raise SystemExit("--input without its --instruction")
    texts += [alpaca_prompt(text, inputs[i] if i < len(inputs) else "") for i, text in enumerate(instructions)]
    return texts or [""], len(instructions)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    weights = read(args.checkpoint, tokenizer=args.tokenizer)
    if weights.tokenizer is None:
        raise SystemExit(f"no tokenizer for {args.checkpoint}: pass --tokenizer")
    device, dtype = default_device_and_dtype()
    device = torch.device(args.device) if args.device else device
    dtype = getattr(torch, args.dtype) if args.dtype else dtype
    model = weights.model(device, dtype)
    sp = spm.SentencePieceProcessor(model_file=str(weights.tokenizer))
    texts, instructions = prompt_texts(args)
    prompts = [[sp.bos_id()] + sp.encode(t) for t in texts]
    # An instruction's template is not printed back: only the response.
    shown = [1] * (len(texts) - instructions) + [len(p) for p in prompts[len(texts) - instructions:]]
    eos_id = sp.eos_id() if sp.eos_id() >= 0 else None
    if args.beams:
        outputs = [beam_search(model, p, args.max_new_tokens, args.beams, args.length_penalty, eos_id)[0]
                   for p in prompts]
    else:
        generator = torch.Generator(device).manual_seed(args.seed)
        batch = [p for p in prompts for _ in range(args.num_samples)]
        shown = [start for start in shown for _ in range(args.num_samples)]
        outputs = generate_batch(model, batch, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                                 eos_id, generator)
    for ids, start in zip(outputs, shown):
        print(sp.decode(ids[start:]))
        print("---")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
