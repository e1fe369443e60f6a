"""Does curation train a better model? `python -m trainer.ablate --run RUN_DIR --output DIR --wikipedia TEXT…
[--lm DIR] [--wikiref DIR] [KEY=VALUE …]` (`arms=[head,tail]`, `seeds=[0]`, `max_steps=600`, …).

Settings (trainer.config.AblationConfig, listed with their meanings by `--print-settings`): the flags are
shortcuts for the settings run, output, wikipedia (repeat the flag or give several), lm and wikiref;
`--config FILE` reads any subset (YAML), `KEY=VALUE` arguments override them. The ablation itself (arms,
evaluation sets, results) is trainer.ablation.
"""

from __future__ import annotations

from pathlib import Path

from curation.settings import parse_command
from trainer.config import AblationConfig

FLAGS = {"--run": "run", "--output": "output", "--wikipedia": "wikipedia", "--lm": "lm", "--wikiref": "wikiref"}


def parse_config(argv: list[str] | None = None) -> AblationConfig:
    """The settings of this command line (`--print-settings` prints them and exits; a wrong one exits 2)."""
    return parse_command(AblationConfig, argv, prog="python -m trainer.ablate", description=__doc__, flags=FLAGS)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(argv)
    from trainer.ablation import run_ablation, table  # torch's import takes seconds: after the settings' checks

    results = run_ablation(cfg)
    print(table(results))
    print(f"results: {Path(cfg.output) / 'results.json'}, plot: {Path(cfg.output) / 'ablate.png'}, "
          f"{results['seconds']} s")


if __name__ == "__main__":
    main()
