"""Instruction-tune a pretrained model as Stanford Alpaca did: `python -m trainer.finetune --data FILE
--checkpoint model.pt --tokenizer tokenizer.model [--out-dir DIR] [KEY=VALUE …]` (`mode=full`, `merge=true`,
`epochs=1`, `val_size=8`, …).

Settings (trainer.config.FinetuneConfig, listed with their meanings by `--print-settings`): the four flags are
shortcuts for the settings data, checkpoint, tokenizer and out_dir; `--config FILE` reads any subset (YAML),
`KEY=VALUE` arguments override them. `mode=lora` trains alpaca-lora's adapters on the frozen model, `mode=full`
every weight (under torchrun: FSDP2 or DDP). The fine-tuning itself is trainer.instruct.
"""

from __future__ import annotations

import os
from pathlib import Path

from curation.settings import parse_command
from trainer.config import FinetuneConfig

FLAGS = {"--data": "data", "--checkpoint": "checkpoint", "--tokenizer": "tokenizer", "--out-dir": "out_dir"}


def parse_config(argv: list[str] | None = None) -> FinetuneConfig:
    """The settings of this command line (`--print-settings` prints them and exits; a wrong one exits 2)."""
    return parse_command(FinetuneConfig, argv, prog="python -m trainer.finetune", description=__doc__, flags=FLAGS)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(argv)
    for path in (cfg.data, cfg.checkpoint):
        if not Path(path).exists():
            raise SystemExit(f"no {path}: pass --data and --checkpoint (`make pretrain` writes a model.pt)")
    from trainer.instruct import finetune  # torch's import takes seconds: only once the settings are known good

    result = finetune(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        for key in ("adapter", "model"):
            if result[key]:
                print(f"{key}: {result[key]}")


if __name__ == "__main__":
    main()
