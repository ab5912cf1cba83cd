"""The ``pemn`` command line: thin wrappers that parse, build a config and call the library."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

__all__ = ["main"]


def _split_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """``[config.toml] [key=value ...]`` -> (config path, overrides)."""
    paths = [item for item in items if "=" not in item]
    if len(paths) > 1:
        raise ValueError(f"unexpected argument {paths[1]!r}: give one config file, then "
                         f"key=value overrides")
    return (paths[0] if paths else None), [item for item in items if "=" in item]


def cmd_train(args) -> None:
    from pemn.config import ConfigError, load_config
    from pemn.distributed import World
    from pemn.run import run
    from pemn.rundir import RunDir

    if args.resume and not args.config_and_overrides:
        cfg = RunDir(args.resume).read_config()
        cfg.out_dir, cfg.name = str(Path(args.resume).parent), Path(args.resume).name
    else:
        cfg = load_config(*_split_overrides(args.config_and_overrides))
        trains_in = RunDir.of(cfg).path
        if args.resume and trains_in.resolve() != Path(args.resume).resolve():
            raise ConfigError(f"--resume {args.resume}, but the config trains in "
                              f"{trains_in}; pass the run directory alone "
                              f"(pemn train --resume {args.resume}) or set out_dir and name")
    s = run(cfg, resume=bool(args.resume), progress=not args.no_progress)
    if not World.from_env().is_main:  # under torchrun, one summary
        return
    lines = [f"run            {s['run']}",
             f"test accuracy  final {s['final_test_acc']:.2f} %, best {s['best_test_acc']:.2f} %"]
    if "best_val_acc" in s:
        lines.append(f"validation     best {s['best_val_acc']:.2f} % "
                     f"(test at that epoch {s['test_acc_at_best_val']:.2f} %)")
    lines += [f"P (masked)     {s['num_masked']:,}",
              f"U (unique)     {s['num_unique']:,}",
              f"paper CR       {100 * s['compression_ratio']:.3f} %",
              f"dense fp32     {s['dense_fp32_bytes']:,} bytes of masked weights",
              f"speed          {s['images_per_s']:.0f} images/s, wall {s['wall_s']:.0f} s"]
    print("\n".join(lines))


def cmd_info(args) -> None:
    from pemn import stats
    from pemn.config import format_value, load_config
    from pemn.run import model_from_config

    cfg = load_config(*_split_overrides(args.config_and_overrides))
    s = stats(model_from_config(cfg))
    info = {"model": cfg.model.name, "strategy": cfg.mask.strategy.label(), **s.as_dict(),
            "mask_bytes": -(-s.mask_bits // 8), "other_fp32_bytes": 4 * s.num_other_params}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for k, v in info.items():
            print(f"{k:<{width}}  {format_value(v, 4, ',')}")


def cmd_eval(args) -> None:
    from pemn.evaluate import evaluate_path

    result = evaluate_path(args.path, split=args.split, data_root=args.data_root,
                           dataset=args.dataset, form=args.form)
    print(json.dumps(result, indent=2) if args.json else
          f"{result['split']} accuracy {result['accuracy']:.2f} % on {result['num_images']} "
          f"images ({result['dataset']})")


def cmd_pack(args) -> None:
    from pemn.trained import pack_trained

    out, num_bytes = pack_trained(args.path, args.output, codec=args.codec,
                                  precision=args.precision, sign_with=args.sign_with)
    print(f"wrote {out}: {num_bytes:,} bytes")


def cmd_size(args) -> None:
    from pemn.rundir import ARTIFACT_SUFFIX, RunDir
    from pemn.trained import load_model
    from pemn.storage import format_size_table, size_report

    source = Path(args.path)
    if source.is_dir() and RunDir(source).artifact.is_file():  # a run's packed model
        source = RunDir(source).artifact
    if source.suffix != ARTIFACT_SUFFIX:  # a run or checkpoint: priced as it would be packed
        source = load_model(source)
    report = size_report(source)
    print(json.dumps(report, indent=2) if args.json else format_size_table(report))


def cmd_export(args) -> None:
    from pemn.artifact import export
    from pemn.rundir import ARTIFACT_SUFFIX
    from pemn.trained import load_model

    source = args.path
    if Path(source).suffix != ARTIFACT_SUFFIX:
        source = load_model(source)
    num_bytes = export(source, args.output, format=args.format)
    print(f"wrote {args.output}: {num_bytes:,} bytes ({args.format}, dense, loads without pemn)")


def cmd_sweep(args) -> None:
    from pemn.experiments import describe_sweep, run_sweep

    if args.dry_run:
        print(describe_sweep(args.sweep_config, args.limit, args.shard))
        return
    results = run_sweep(args.sweep_config, results=args.results, limit=args.limit,
                        collect_only=args.collect, shard=args.shard,
                        stale_after=args.stale_after)
    print(f"results: {results} (CSV export: {results.with_suffix('.csv')})")


def cmd_plot(args) -> None:
    from pemn.experiments import plot_results, summary_table

    chosen = dict(metric=args.metric, precision=args.precision, series=args.series or ())
    for path in plot_results(args.results, args.out_dir, **chosen):
        print(path)
    if args.table:
        print(summary_table(args.results, **chosen))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pemn", description="Parameter-Efficient Masking Networks: "
                                "masks over fixed random weights, stored as seed + bit masks.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train one configuration",
                       description="Train from a TOML config plus key=value overrides, e.g. "
                       "`pemn train configs/fmnist_convmixer.toml optim.epochs=2 "
                       "mask.strategy.ratio=1e-2`. Keys: model.*, mask.*, data.*, optim.*, "
                       "out_dir, name.")
    t.add_argument("config_and_overrides", nargs="*", metavar="CONFIG | KEY=VALUE")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)

    i = sub.add_parser("info", help="P, U, CR and sizes of a config, without training")
    i.add_argument("config_and_overrides", nargs="*", metavar="CONFIG | KEY=VALUE")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_info)

    e = sub.add_parser("eval", help="evaluate a run directory, checkpoint or .pemn artifact")
    e.add_argument("path", metavar="RUN_DIR_CHECKPOINT_OR_ARTIFACT")
    e.add_argument("--split", choices=["test", "train"], default="test")
    e.add_argument("--data-root", help="where the dataset lives (default: its usual place)")
    e.add_argument("--dataset", help="dataset name (default: the one the source records)")
    e.add_argument("--form", choices=["train", "dense", "packed"], default="train",
                   help="in-memory form of a PEMN model: same accuracy, different memory "
                   "(docs/PERFORMANCE.md)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_eval)

    pk = sub.add_parser("pack", help="pack a trained run into a compact .pemn artifact")
    pk.add_argument("path", metavar="RUN_DIR_CHECKPOINT_OR_ARTIFACT")
    pk.add_argument("-o", "--output", help="output file (default: model.pemn in the run "
                    "directory)")
    pk.add_argument("--codec", default="auto", help="mask codec: auto (the smallest, mask by "
                    "mask) or one of pemn.artifact.codec.list_codecs()")
    pk.add_argument("--precision", choices=["exact", "fp16", "bf16", "norm8"], default="exact",
                    help="exact: bit-identical logits; fp16/bf16: BatchNorm folded into its "
                    "affine and floats in 16 bits (a smaller file, logits within rounding); "
                    "norm8: fp16 with the norm layers' affine in int8")
    pk.add_argument("--sign-with", metavar="KEY", help="ed25519 private key (PEM) to sign the "
                    "file with (docs/THREAT_MODEL.md)")
    pk.set_defaults(fn=cmd_pack)

    sz = sub.add_parser("size", help="bytes per component, paper CR, and the usual alternatives")
    sz.add_argument("path", metavar="FILE_OR_RUN")
    sz.add_argument("--json", action="store_true")
    sz.set_defaults(fn=cmd_size)

    ex = sub.add_parser("export", help="write a plain dense model that loads without pemn")
    ex.add_argument("path", metavar="ARTIFACT_OR_RUN")
    ex.add_argument("-o", "--output", required=True)
    ex.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors")
    ex.set_defaults(fn=cmd_export)

    s = sub.add_parser("sweep", help="run a grid of configurations; finished runs are skipped")
    s.add_argument("sweep_config", metavar="SWEEP_CONFIG")
    s.add_argument("--dry-run", action="store_true", help="list the runs, train nothing")
    s.add_argument("--limit", type=int, help="only the first N runs of the grid")
    s.add_argument("--collect", action="store_true",
                   help="train nothing: pack finished runs and record them in the results")
    s.add_argument("--results", metavar="JSONL",
                   help="results file, one JSON line per run (default: in the sweep's out_dir)")
    s.add_argument("--shard", metavar="K/N", help="runs K, K+N, K+2N, ... of the grid "
                   "(default: SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT, if set)")
    s.add_argument("--stale-after", type=float, metavar="SECONDS",
                   help="take over a run whose claim has had no heartbeat this long (300)")
    s.set_defaults(fn=cmd_sweep)

    pl = sub.add_parser("plot", help="figures (PNG + SVG) from a sweep's results.jsonl")
    pl.add_argument("results", metavar="RESULTS_JSONL", nargs="+",
                    help="one or more results files, read as one")
    pl.add_argument("-o", "--out-dir", required=True)
    pl.add_argument("--metric", default="best_test_acc",
                    # pemn.experiments.plots.METRICS, not imported: the CLI starts fast
                    choices=["best_test_acc", "final_test_acc", "test_acc_at_best_val",
                             "best_val_acc"])
    pl.add_argument("--table", action="store_true", help="also print a markdown summary table")
    pl.add_argument("--precision", default="exact", choices=["exact", "fp16", "norm8"],
                    help="price every run by its exact (fp32), fp16 or norm8 file")
    pl.add_argument("--series", action="append", metavar="GLOB",
                    help="only the series whose label (as in the legend) matches; repeatable, "
                         "e.g. --series 'RP 1e-3*' --series 'Int8*'")
    pl.set_defaults(fn=cmd_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow flags (`train --no-progress optim.lr=1`): collect the leftovers.
    args, extra = parser.parse_known_args(argv)
    verbose = {"-v", "--verbose"} & set(extra)  # also accepted after the command
    args.verbose, extra = args.verbose or bool(verbose), [x for x in extra if x not in verbose]
    if extra and (not hasattr(args, "config_and_overrides")
                  or any(x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.config_and_overrides += extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    try:
        args.fn(args)
        return 0
    except KeyboardInterrupt:
        print("pemn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `pemn info ... | head` closed our stdout: not an error. Point stdout at devnull so
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        if args.verbose:
            raise
        message, expected = _error_line(e, args.command)
        print(f"pemn: error: {message}", file=sys.stderr)
        return 2 if expected else 1


def _error_line(error: Exception, command: str) -> tuple[str, bool]:
    """One line naming what failed, and whether it is expected (no traceback needed)."""
    # the project's errors are ValueErrors; OSError: missing, unreadable or unwritable files
    if isinstance(error, (ValueError, OSError, ImportError)):
        return " ".join(str(error).split()) or type(error).__name__, True
    from pemn.run import is_out_of_memory, memory_text

    if is_out_of_memory(error):
        return f"not enough memory to run `pemn {command}` ({memory_text(error)})", True
    lines = str(error).strip().splitlines()  # torch's messages can run to many lines
    detail = f": {' '.join(lines[0].split())[:300]}" if lines else ""
    return (f"pemn {command} failed with {type(error).__name__}{detail} (pemn -v {command} ... "
            f"shows the traceback)"), False


if __name__ == "__main__":
    sys.exit(main())
