"""What a pretraining run (trainer.pretrain's `Run`) tells besides its checkpoints: its printed lines, rank 0's
`log.jsonl`, `loss.png`, and at the end of a run `report.html` in out_dir: the losses and, when the run drew from
a mixture (trainer.mixture), per source the tokens available, the share planned and drawn and the epochs (the
run's so far and at its planned end, beside LLaMA's), with the drawn shares over the steps (`mixture.png`). The
printed lines show the mixture's table when an invocation starts and when it ends."""

from __future__ import annotations

import html
import json
from pathlib import Path

from trainer.mixture import MixtureLoader

COLUMNS = ("source", "train tokens", "planned", "drawn", "epochs", "at end", "LLaMA")
WIDTHS = (14, 13, 8, 8, 7, 7, 6)  # of the printed table's columns


def open_log(run):
    """Rank 0's log.jsonl (a resumed run continues it) and its opening lines; None on the other ranks."""
    if not run.master:
        return None
    out = Path(run.cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout = "FSDP" if run.fsdp else "DDP" if run.world > 1 else "one process"
    print(f"{run.cfg.preset}: {run.model.num_params():,} parameters, {run.loader.num_windows:,} training windows, "
          f"{run.tokens_per_step:,} tokens/step ({run.grad_accum} accumulated), {run.world} × {run.device}, {layout}"
          f"{', activation checkpointing' if run.cfg.activation_checkpointing else ''}")
    print_mixture(run)
    return open(out / "log.jsonl", "a" if run.step else "w")


def log_step(run, log, loss: float, lr: float, grad_norm: float, seconds: float, peak_flops: float | None) -> None:
    """A step's row of log.jsonl (from a mixture, with the windows drawn so far per source), and every
    log_interval steps a printed line. `peak_flops`: the device's, for MFU (None: unknown)."""
    row = {"step": run.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
           "tokens_per_s": run.tokens_per_step / seconds, "dt": seconds}
    if peak_flops:
        row["mfu"] = run.model.flops_per_token(run.cfg.seq_len) * row["tokens_per_s"] / (peak_flops * run.world)
    if isinstance(run.loader, MixtureLoader):
        row["drawn"] = dict(zip(run.loader.names, run.loader.drawn.tolist()))
    log.write(json.dumps(row) + "\n")
    log.flush()
    if run.step % run.cfg.log_interval == 0 or run.step == run.cfg.max_steps:
        mfu = f", MFU {row['mfu']:.1%}" if peak_flops else ""
        print(f"step {run.step}/{run.cfg.max_steps}: loss {loss:.4f}, lr {lr:.2e}, grad norm {grad_norm:.2f}, "
              f"{row['tokens_per_s']:,.0f} tokens/s{mfu}")


def log_validation(run, log, losses: dict[str, float]) -> None:
    """The validation losses (`losses["all"]`, and per source from a mixture) into log.jsonl and printed."""
    if log:
        by_source = {name: loss for name, loss in losses.items() if name != "all"}
        log.write(json.dumps({"step": run.step, "val_loss": losses["all"],
                              **({"val_loss_by_source": by_source} if by_source else {})}) + "\n")
        log.flush()
        sources = ", ".join(f"{name} {loss:.4f}" for name, loss in by_source.items())
        print(f"step {run.step}: validation loss {losses['all']:.4f}" + (f" ({sources})" if sources else ""))


def mixture_table(run) -> list[dict] | None:
    """Per source of the run's mixture: tokens, shares, epochs (MixtureLoader.table); None without a mixture."""
    if not isinstance(run.loader, MixtureLoader):
        return None
    return run.loader.table(run.cfg.max_steps * run.tokens_per_step // run.cfg.seq_len)


def print_mixture(run) -> None:
    """The mixture's table and the sources left out of it, on rank 0."""
    table = mixture_table(run)
    if run.master and table:
        print("\n".join([f"mixture at step {run.step}:", *table_lines(table)]))
        for name, why in run.loader.left_out.items():
            print(f"left out {name}: {why}; the others' shares grew in proportion")


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def log_rows(log_path: Path) -> list[dict]:
    return [json.loads(line) for line in log_path.read_text().splitlines()]


def plot_losses(log_path: Path, png_path: Path) -> None:
    plt = pyplot()
    rows = log_rows(log_path)
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


def plot_mixture(log_path: Path, table: list[dict], png_path: Path) -> None:
    """The share of the windows drawn so far from each source at each step, and its planned share (dashed)."""
    plt = pyplot()
    rows = [r for r in log_rows(log_path) if "drawn" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    for number, source in enumerate(table):
        color = f"C{number}"
        ax.plot([r["step"] for r in rows], [r["drawn"][source["source"]] / sum(r["drawn"].values()) for r in rows],
                color=color, label=source["source"])
        ax.axhline(source["planned"], color=color, linestyle="--", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("share of the windows drawn")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)


def table_cells(row: dict) -> list[str]:
    return [row["source"], f"{row['train_tokens']:,}", f"{row['planned']:.2%}", f"{row['drawn']:.2%}",
            f"{row['epochs']:.3f}", f"{row['epochs_at_end']:.3f}", f"{row['llama_epochs']:.2f}"]


def aligned(cells) -> str:
    return " ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, WIDTHS)))


def table_lines(table: list[dict]) -> list[str]:
    """The mixture's table as printed lines: tokens available, share planned and drawn, epochs so far, at the
    end of the run, and LLaMA's."""
    return [aligned(COLUMNS), *(aligned(table_cells(row)) for row in table)]


def write_report(out_dir: Path, table: list[dict] | None, left_out: dict[str, str], step: int) -> Path:
    """out_dir/report.html: the loss curve and, for a mixture, its table and mixture.png (drawn here)."""
    rows = log_rows(out_dir / "log.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    parts = [f"<p>{step} steps; last training loss {losses[-1]:.4f}" if losses else f"<p>{step} steps",
             f"; last validation loss {val[-1]['val_loss']:.4f} (step {val[-1]['step']})</p>" if val else "</p>",
             '<h2>Losses</h2><img src="loss.png" alt="losses">']
    if table:
        plot_mixture(out_dir / "log.jsonl", table, out_dir / "mixture.png")
        head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in table_cells(r)) + "</tr>" for r in table)
        left = "".join(f"<li>{html.escape(name)}: {html.escape(why)}</li>" for name, why in left_out.items())
        parts += ["<h2>Mixture</h2><p>Share of the training windows planned and drawn per source; epochs over its "
                  "tokens so far, at the planned end of the run, and LLaMA's (Table 1).</p>",
                  f"<table><tr>{head}</tr>{body}</table>", f"<p>Left out:</p><ul>{left}</ul>" if left else "",
                  '<img src="mixture.png" alt="drawn shares">']
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Pretraining report: {html.escape(out_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>Pretraining report: {html.escape(str(out_dir))}</h1>
{"".join(parts)}
</body></html>"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path
