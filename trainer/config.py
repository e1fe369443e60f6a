"""The settings of the trainer's commands (`trainer.train`, `trainer.finetune`, `trainer.ablate`), each field
with its default and meaning (`curation.settings.setting`). This module imports no torch: a command reads and
checks its command line (`curation.settings.parse_command`) before the seconds of torch's import, so a wrong
setting is refused at once."""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

from curation.model_paths import LM_DIR, WIKIREF_DIR
from curation.settings import setting

# The model sizes of trainer.model.PRESETS (a test keeps the two equal; that module needs torch).
PresetName = Literal["7B", "13B", "33B", "65B", "1B", "small", "tiny"]
# The ablation's arms: CCNet's perplexity buckets, then the other selections of one curate run.
Arm = Literal["head", "middle", "tail", "wikiref", "curated", "c4", "raw"]
ARMS: tuple[str, ...] = typing.get_args(Arm)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Pretraining LLaMA on token shards (`python -m trainer.train`)."""
    preset: PresetName = setting("tiny", "model size from trainer.model.PRESETS")
    data_dir: str = setting("runs/local/shards", "directory (local path or URI, e.g. s3://) of train-*.idx / "
                                                 "val-*.idx shards")
    mixture: str | None = setting(None, "LLaMA's mixture instead of data_dir: its settings file (config/mixture.yaml) "
                                        "once `make mixture` built it; each batch draws from its sources by share")
    out_dir: str = setting("runs/local/pretrain", "checkpoint, log, loss curve and report.html go here")
    seq_len: int = setting(128, "tokens of context per training window", minimum=1)
    batch_size: int = setting(16, "windows per micro-batch per process", minimum=1)
    grad_accum: int = setting(1, "micro-batches summed into one optimizer step (unless global_batch_tokens is set)",
                              minimum=1)
    global_batch_tokens: int | None = setting(None, "tokens per optimizer step, all ranks; sets grad_accum from the "
                                                    "world size", minimum=1)
    max_steps: int = setting(300, "optimizer steps in the whole run; the schedule spans these", minimum=1)
    stop_at: int | None = setting(None, "end this invocation after this step (a time-limited job slot); resume later",
                                  minimum=0)
    lr: float | None = setting(None, "peak learning rate; null takes the preset's", minimum=0)
    warmup_steps: int | None = setting(None, "linear warmup; null = the paper's 2000, capped at 10 % of max_steps",
                                       minimum=0)
    min_lr_ratio: float = setting(0.1, "cosine decays to this fraction of the peak (LLaMA: 10 %)", minimum=0, maximum=1)
    weight_decay: float = setting(0.1, "AdamW decay, applied to matrices only", minimum=0)
    beta1: float = setting(0.9, "AdamW β1", minimum=0, maximum=1)
    beta2: float = setting(0.95, "AdamW β2", minimum=0, maximum=1)
    grad_clip: float = setting(1.0, "global gradient-norm clip", minimum=0)
    eval_interval: int = setting(50, "steps between validation losses (0: only at the end)", minimum=0)
    eval_batches: int = setting(8, "validation batches per evaluation", minimum=1)
    ckpt_interval: int = setting(100, "steps between checkpoints (one is always written at the end)", minimum=1)
    log_interval: int = setting(10, "steps between printed lines (every step goes to log.jsonl)", minimum=1)
    seed: int = setting(1337, "model init and data order")
    compile: bool = setting(False, "torch.compile each transformer block")
    parallelism: Literal["ddp", "fsdp"] = setting("ddp", "under torchrun: ddp replicates the model (small models), "
                                                         "fsdp shards it (FSDP2)")
    mixed_precision: bool = setting(True, "bf16 compute on CUDA (FSDP: bf16 params, fp32 reduction; DDP: autocast); "
                                          "CPU fp32")
    activation_checkpointing: bool = setting(False, "each block keeps only its input and recomputes the rest in "
                                                    "backward")
    device: str = setting("auto", "auto: cuda when available, else cpu; or a torch device (cuda:1)")
    resume: bool = setting(True, "continue from the newest out_dir/checkpoint/step-N when there is one")
    allow_shard_change: bool = setting(False, "resume although the training shards differ from the checkpoint's "
                                              "(new order)")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Instruction tuning as Stanford Alpaca / alpaca-lora (`python -m trainer.finetune`)."""
    data: str = setting("../shared/data/instruct/self-instruct-seed-tasks.jsonl",
                        "Alpaca JSON/JSONL or Self-Instruct tasks")
    checkpoint: str = setting("runs/local/pretrain/model.pt", "the base model: any format trainer.convert reads")
    tokenizer: str | None = setting(None, "SentencePiece model; null: the one beside a Meta / Hugging Face checkpoint")
    out_dir: str = setting("runs/local/finetune", "checkpoints, log, adapter and model.pt go here")
    mode: Literal["lora", "full"] = setting("lora", "lora: adapters on the frozen model (alpaca-lora); full: every "
                                                    "weight (Alpaca)")
    lora_r: int = setting(8, "adapter rank (alpaca-lora: 8)", minimum=1)
    lora_alpha: int = setting(16, "adapter output scaled by alpha / r (alpaca-lora: 16)", minimum=1)
    lora_dropout: float = setting(0.05, "dropout on the adapter's input (alpaca-lora: 0.05)", minimum=0, maximum=1)
    lora_targets: str = setting("wq,wv", "comma-separated module names given adapters (alpaca-lora: q_proj, v_proj)")
    max_len: int = setting(512, "tokens per example, BOS to EOS; longer ones are cut (Alpaca: 512)", minimum=1)
    val_size: int = setting(0, "examples held out (a seeded draw) for the held-out response loss", minimum=0)
    batch_size: int = setting(128, "examples per optimizer step over all ranks (Alpaca and alpaca-lora: 128)",
                              minimum=1)
    micro_batch_size: int = setting(4, "examples per forward per rank; batch_size / (this × ranks) are accumulated",
                                    minimum=1)
    epochs: float = setting(3.0, "passes over the training examples (Alpaca: 3); sets the number of steps", minimum=0)
    max_steps: int | None = setting(None, "optimizer steps of the schedule instead of `epochs` (short runs)", minimum=1)
    stop_at: int | None = setting(None, "end this invocation after this step (a time-limited slot); rerun to resume",
                                  minimum=0)
    lr: float | None = setting(None, "peak learning rate; null: 3e-4 for lora (alpaca-lora), 2e-5 for full (Alpaca)",
                               minimum=0)
    warmup_ratio: float = setting(0.03, "linear warmup over this fraction of the steps, then cosine to 0 (Alpaca)",
                                  minimum=0, maximum=1)
    weight_decay: float = setting(0.0, "AdamW decay on matrices (Alpaca: 0)", minimum=0)
    beta1: float = setting(0.9, "AdamW β1 (Hugging Face Trainer's default, which Alpaca used)", minimum=0, maximum=1)
    beta2: float = setting(0.999, "AdamW β2 (idem)", minimum=0, maximum=1)
    grad_clip: float = setting(1.0, "global gradient-norm clip (Trainer's max_grad_norm)", minimum=0)
    eval_interval: int = setting(0, "steps between held-out losses (0: only before and after training)", minimum=0)
    ckpt_interval: int = setting(100, "steps between checkpoints (one is always written at the end)", minimum=1)
    log_interval: int = setting(10, "steps between printed lines (every step goes to log.jsonl)", minimum=1)
    seed: int = setting(42, "data split and order, adapter initialisation, dropout")
    parallelism: Literal["fsdp", "ddp"] = setting("fsdp", "full mode under torchrun: fsdp (FSDP2) or ddp; lora "
                                                          "always replicates (DDP)")
    mixed_precision: bool = setting(True, "bf16 compute on CUDA, fp32 on the CPU")
    activation_checkpointing: bool = setting(False, "full mode: each block recomputes its activations in backward")
    device: str = setting("auto", "auto: cuda when available, else cpu; or a torch device (cuda:1)")
    resume: bool = setting(True, "continue from the newest out_dir/checkpoint/step-N when there is one")
    merge: bool = setting(False, "lora: fold the adapters into the weights and write out_dir/model.pt")

    def train_config(self) -> TrainConfig:
        """The pretraining settings trainer.pretrain's functions read (model build, optimizer, checkpoints)."""
        return TrainConfig(data_dir=self.data, out_dir=self.out_dir, seq_len=self.max_len,
                           batch_size=self.micro_batch_size, lr=self.lr, min_lr_ratio=0.0,
                           weight_decay=self.weight_decay, beta1=self.beta1, beta2=self.beta2, grad_clip=self.grad_clip,
                           ckpt_interval=self.ckpt_interval, log_interval=self.log_interval, seed=self.seed,
                           parallelism=self.parallelism, mixed_precision=self.mixed_precision,
                           activation_checkpointing=self.activation_checkpointing and self.mode == "full",
                           device=self.device, resume=self.resume)


@dataclasses.dataclass(frozen=True)
class AblationConfig:
    """Does curation train a better model? The same small LLaMA on each arm of a run (`python -m trainer.ablate`)."""
    run: str | None = setting(None, "a curate run directory (curated/, segments/)", required=True)
    output: str | None = setting(None, "results.json, ablate.png, the arms' shards and models", required=True)
    lm: str = setting(LM_DIR, "the KenLM directory the run used (its manifest.json names what the models read)")
    wikiref: str = setting(WIKIREF_DIR, "the wikiref classifier directory the run used (its manifest.json)")
    wikipedia: list[str] = setting([], "Wikipedia text held out of both models: the `wikipedia` evaluation set",
                                   required=True)
    arms: list[Arm] = setting(list(ARMS), "arms to train; c4 only when the run has C4 marks (c4_keep)")
    language: str | None = setting("en", "bucket/wikiref/curated/c4 arms keep this language (null: all); raw has "
                                         "none yet")
    seeds: list[int] = setting([0, 1, 2], "one model per arm and seed (init and data order)")
    token_budget: int | None = setting(None, "distinct training tokens per arm; null: the smallest arm's", minimum=1)
    max_tokens: int = setting(2_000_000, "an arm is encoded up to this many tokens (bounds the work on big runs)",
                              minimum=1)
    split_seed: int = setting(0, "draws the held-out raw slice and the order of documents within an arm")
    raw_heldout_fraction: float = setting(0.05, "share of phase-1 documents (by URL hash) held out of every arm",
                                          minimum=0, maximum=1)
    eval_tokens: int = setting(32_768, "tokens per evaluation set at most (documents in seeded order, the last one "
                                       "cut)", minimum=1)
    vocab_size: int = setting(4096, "the shared tokenizer's (shrunk by tokenizer.train when the sample is small)",
                              minimum=1)
    tokenizer_chars: int = setting(20_000_000, "character budget of the tokenizer's sample", minimum=1)
    character_coverage: float = setting(0.9995, "below LLaMA's 0.99995: raw pages hold CJK text a small vocabulary "
                                                "cannot", minimum=0, maximum=1)
    preset: PresetName = setting("tiny", "model size from trainer.model.PRESETS")
    seq_len: int = setting(128, "tokens of context per window", minimum=1)
    batch_size: int = setting(4, "windows per step", minimum=1)
    # The defaults: 77k tokens, about one pass over a bucket of the shared-data run, ~1 min a model on one busy core.
    max_steps: int = setting(150, "optimizer steps per model (scale it, seq_len and batch_size up with the run)",
                             minimum=1)
    lr: float | None = setting(None, "peak learning rate; null: the preset's", minimum=0)
    eval_batches: int = setting(2, "the trainer's own validation batches (on `wikipedia`) at start and end", minimum=1)
    threads: int = setting(1, "torch threads (more only on an idle machine: waiting OpenMP threads slow tiny models)",
                           minimum=1)
