"""The jtcse command line: one sub-command per pipeline stage (arguments mirror dvc.yaml's deps and outs), plus
encode and similarity for using a trained model. `jtcse COMMAND --help` describes each command."""

# The module doc is the --help text: plain text, no markup. Heavy libraries (torch, transformers,
# great-expectations) are imported inside the commands, so --help and --version answer at once.

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from jtcse.errors import UserError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("jtcse")

#: Sub-commands that train; with runtime.nproc_per_node > 1 they relaunch themselves under torchrun.
TRAINING_COMMANDS = ("train-tower", "train", "distill")


#: Suffixes `encode --output` and `similarity --output` understand; "-" is standard output.
OUTPUT_FORMATS = {".npy": "npy", ".csv": "csv", ".jsonl": "jsonl"}


def _settings(args):
    from jtcse.config import ConfigError, load_settings

    overrides = dict(getattr(args, "set", None) or [])
    try:
        return load_settings(args.params, overrides=overrides)
    except ConfigError as err:
        if not overrides:
            raise
        given = " ".join(f"--set {key}=..." for key in overrides)
        raise ConfigError(f"{err} (settings from {args.params} with {given})") from None


def _assignment(text: str) -> tuple[str, object]:
    """``--set train.lr=2e-5``: a dotted key and a YAML value (the settings validate both on load)."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a dotted key (train.lr=2e-5), got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"{key}: value {raw!r} is not valid YAML ({getattr(err, 'problem', err)})")
    return key, value


def _add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="settings file (default: params.yaml)")


def _add_run_args(p: argparse.ArgumentParser, output_help: str) -> None:
    _add_params(p)
    p.add_argument("--output", required=True, help=output_help)
    p.add_argument("--checkpoint-dir", help="resumable checkpoints (default: checkpoints/<output name>)")
    p.add_argument("--metrics-dir", help="train.csv / eval.csv / summary.json for DVC plots and metrics")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if checkpoints exist")
    p.add_argument("--set", action="append", type=_assignment, metavar="KEY=VALUE",
                   help="override one setting of --params for this run, e.g. --set train.lr=2e-5 (dotted key, "
                        "YAML value; repeatable). Outside DVC only: in the pipeline use `dvc exp run -S`.")


def _checkpoint_dir(args) -> Path:
    return Path(args.checkpoint_dir) if args.checkpoint_dir else Path("checkpoints") / Path(args.output).name


def _report_training(name: str, result, output: str) -> None:
    from jtcse.training import distributed

    if distributed.is_main():  # under torchrun, one line for the run, not one per process
        print(f"{name}: STS-B dev {result.initial_metric:.2f} -> best {result.best_metric:.2f} "
              f"(step {result.best_step}) in {result.seconds / 60:.1f} min; saved to {output}")


def cmd_train_tower(args) -> None:
    from jtcse.training.stages import train_tower

    result = train_tower(_settings(args), which=args.tower, output=args.output, checkpoint_dir=_checkpoint_dir(args),
                         metrics_dir=args.metrics_dir, init=args.init, resume=not args.no_resume)
    _report_training(f"tower {args.tower}", result, args.output)


def cmd_train(args) -> None:
    from jtcse.training.stages import train_twin

    result = train_twin(_settings(args), tower_a=args.tower_a, tower_b=args.tower_b, output=args.output,
                        checkpoint_dir=_checkpoint_dir(args), metrics_dir=args.metrics_dir, resume=not args.no_resume)
    _report_training("jtcse twin", result, args.output)


def cmd_distill(args) -> None:
    from jtcse.training.stages import distill_twin

    result = distill_twin(_settings(args), twin=args.twin, output=args.output, checkpoint_dir=_checkpoint_dir(args),
                          metrics_dir=args.metrics_dir, resume=not args.no_resume)
    _report_training("jtcse-d", result, args.output)


def _evaluation_encoder(args):
    from jtcse.api import load
    from jtcse.encoding import TowerEncoder, TwinEncoder
    encoder = load(args.model, pooling=args.pooling, device=args.device, max_length=args.max_length)
    if args.model_b:
        if not isinstance(encoder, TowerEncoder):
            raise UserError(f"--model-b: {args.model} is not a single tower")
        other = TowerEncoder.from_pretrained(args.model_b, args.pooling, args.max_length, args.device)
        encoder = TwinEncoder(encoder, other, args.combine)
    return encoder


def _transfer_evaluator(args):
    from jtcse.config import Settings, load_settings
    from jtcse.evaluation.transfer import TransferEvaluator

    # Outside a project (no params.yaml here) the documented defaults apply; an explicit --params must exist.
    if args.params:
        settings = load_settings(args.params)
    else:
        settings = load_settings("params.yaml") if Path("params.yaml").is_file() else Settings()
    cfg = settings.transfer
    return TransferEvaluator(args.data_dir or cfg.data_dir, cfg.tasks, batch_size=args.batch_size, folds=cfg.folds,
                             inner_folds=cfg.inner_folds, seed=cfg.seed, max_iter=cfg.max_iter,
                             mrpc_features=cfg.mrpc_features, max_train=cfg.max_train, jobs=cfg.jobs,
                             show_progress=True)


def cmd_evaluate(args) -> None:
    from jtcse.evaluation.sts import STS_TASKS, STSEvaluator, format_table
    from jtcse.evaluation.transfer import TRANSFER_TASKS
    from jtcse.io import atomic_write_json, atomic_write_text, check_output_file

    check_output_file(args.output)
    started = time.perf_counter()
    if args.suite == "transfer":
        evaluator, tasks, unit = _transfer_evaluator(args), TRANSFER_TASKS, "accuracy"
    else:
        evaluator = STSEvaluator(args.data_dir or "data/sts", STS_TASKS, batch_size=args.batch_size, show_progress=True)
        tasks, unit = tuple(STS_TASKS), "spearman"
    encoder = _evaluation_encoder(args)
    results = {k: round(v, 4) for k, v in evaluator(encoder).items()}
    undefined = [task for task, value in results.items() if value != value]
    if undefined:
        raise UserError(f"{args.model}: Spearman is undefined (NaN) on {', '.join(undefined)}: the model gives every "
                        "pair the same similarity (collapsed embeddings); nothing written")
    name = args.name or Path(args.model).name
    print(format_table({name: results}, tasks=tasks))
    elapsed = time.perf_counter() - started
    if args.suite == "transfer":
        timings = evaluator.timings
        print(f"{args.suite} suite: {elapsed:.0f} s ({timings.sentences} distinct sentences encoded in "
              f"{timings.encode:.0f} s; probes " + ", ".join(f"{t} {s:.0f} s" for t, s in timings.probes.items()) + ")")
    else:
        print(f"{args.suite} suite: {elapsed:.0f} s")
    atomic_write_json(args.output, results)
    log.info("metrics -> %s", args.output)
    if args.plot_data:
        rows = [f"{task},{results[task]}" for task in (*tasks, "avg") if task in results]
        atomic_write_text(args.plot_data, f"task,{unit}\n" + "\n".join(rows) + "\n")


def read_sentences(name: str) -> list[str]:
    """One sentence per line of a UTF-8 file ("-": standard input); warns once about blank lines."""
    from jtcse.data import blank_lines_warning
    from jtcse.data import read_sentences as read

    lines = read(name, stdin=sys.stdin.buffer)
    warning = blank_lines_warning("<stdin>" if name == "-" else name, lines)
    if warning:
        print(f"jtcse: warning: {warning}", file=sys.stderr)
    return lines


def output_format(name: str, given: str | None, stdout_default: str) -> str:
    """The --format, else the output's suffix (.npy, .csv, .jsonl); an unknown suffix is an error."""
    if given:
        return given
    if name == "-":
        return stdout_default
    suffix = Path(name).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UserError(f"{name}: unknown output suffix {suffix or '(none)'!r}; use .npy, .csv or .jsonl "
                         f"(or --format)")
    return OUTPUT_FORMATS[suffix]


def write_rows(name: str, fmt: str, values, labels: list[dict] | None = None, key: str = "embedding") -> None:
    """``values`` (a matrix: one row per sentence; or a vector: one score per pair) as .npy, .csv or .jsonl.

    A .jsonl line is ``labels[i]`` plus ``key``: the row. Floats keep 9 significant digits, so a float32
    reads back exactly. A file is written to a temporary sibling and renamed: never half of one.
    """
    import io
    import json

    import numpy as np

    if fmt == "npy":
        buffer = io.BytesIO()
        np.save(buffer, values)
        payload = buffer.getvalue()
    else:
        def exact(v: float) -> float:
            return float(f"{v:.9g}")

        if fmt == "csv":
            rows = values.reshape(len(values), -1)
            text = "".join(",".join(f"{v:.9g}" for v in row.tolist()) + "\n" for row in rows)
        else:
            labels = labels or [{} for _ in range(len(values))]
            text = "".join(json.dumps({**label, key: [exact(v) for v in row] if values.ndim == 2 else exact(row)},
                                      ensure_ascii=False) + "\n" for label, row in zip(labels, values.tolist()))
        payload = text.encode("utf-8")
    if name == "-":
        sys.stdout.buffer.write(payload)
        sys.stdout.flush()
        return
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cmd_encode(args) -> None:
    from jtcse.api import load
    from jtcse.encoding import check_batch_size
    from jtcse.io import check_output_file

    if args.output != "-":
        check_output_file(args.output, parent_must_exist=True)
    check_batch_size(args.batch_size)
    fmt = output_format(args.output, args.format, stdout_default="jsonl")
    lines = read_sentences(args.input)
    encoder = load(args.model, pooling=args.pooling, device=args.device)
    vectors = encoder.encode(lines, batch_size=args.batch_size, normalize_embeddings=args.normalize,
                             show_progress_bar=args.output != "-")
    write_rows(args.output, fmt, vectors, [{"sentence": line} for line in lines])
    where = "standard output" if args.output == "-" else args.output
    print(f"{len(lines)} sentences -> {where} ({fmt}, {vectors.shape[0]} x {vectors.shape[1]})", file=sys.stderr)


def cmd_similarity(args) -> None:
    from jtcse.api import load
    from jtcse.data import DataError

    given = [args.sentences != [], bool(args.pairs), bool(args.matrix)]
    if sum(given) != 1 or (args.sentences and len(args.sentences) != 2) or (args.matrix and len(args.matrix) > 2):
        raise UserError("similarity takes two sentences, or --pairs FILE_A FILE_B, or --matrix FILE_A [FILE_B]")
    fmt = output_format(args.output, args.format, stdout_default="csv")
    encoder = load(args.model, pooling=args.pooling, device=args.device)
    if args.sentences and args.output == "-" and not args.format:
        a, b = encoder.encode(args.sentences, batch_size=args.batch_size)
        print(f"{float(encoder.similarity(a, b)[0, 0]):.4f}")
        return
    pairwise = not args.matrix  # two sentences written to --output are one pair, like --pairs
    if args.sentences:
        left, right = [args.sentences[0]], [args.sentences[1]]
    else:
        files = args.pairs or args.matrix
        left = read_sentences(files[0])
        right = read_sentences(files[1]) if len(files) == 2 else left
    if args.pairs and len(left) != len(right):
        raise DataError(f"--pairs: {args.pairs[0]} has {len(left)} lines but {args.pairs[1]} has {len(right)}; "
                        "line i of one is compared with line i of the other")
    a = encoder.encode(left, batch_size=args.batch_size, convert_to_tensor=True)
    b = encoder.encode(right, batch_size=args.batch_size, convert_to_tensor=True) if right is not left else a
    scores = (encoder.similarity_pairwise(a, b) if pairwise else encoder.similarity(a, b)).cpu().numpy()
    if pairwise:
        write_rows(args.output, fmt, scores, [{"a": x, "b": y} for x, y in zip(left, right)], key="cosine")
    else:
        write_rows(args.output, fmt, scores, [{"sentence": x} for x in left], key="cosines")
    if args.output != "-":
        shape = f"{len(scores)} pairs" if pairwise else f"{scores.shape[0]} x {scores.shape[1]} matrix"
        print(f"cosine similarity of {shape} -> {args.output} ({fmt})", file=sys.stderr)


def cmd_validate(args) -> None:
    from jtcse.validation import validate_data

    settings = _settings(args)
    started = time.perf_counter()
    validate_data(Path(args.data_dir), corpus=Path(args.corpus or settings.data.corpus), docs_dir=args.docs_dir,
                  report=args.report, min_words=settings.validate_data.min_words,
                  max_words=settings.validate_data.max_words)
    print(f"data valid ({time.perf_counter() - started:.1f} s); report -> {args.report}")


def _add_model_args(p: argparse.ArgumentParser, batch_size: int) -> None:
    p.add_argument("--model", required=True,
                   help="package, twin folder, tower, or any local Hugging Face / sentence-transformers model")
    p.add_argument("--pooling", choices=["cls", "mean"], default=None,
                   help="sentence vector of a single tower (default: the model's own, else cls)")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"sentences per forward pass (default: {batch_size})")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the model runs (default: auto = cuda if available)")


def _add_output_args(p: argparse.ArgumentParser, what: str, stdout_default: str) -> None:
    p.add_argument("--output", default="-",
                   help=f"{what}: .npy, .csv or .jsonl, chosen by the suffix; - = standard output "
                        f"({stdout_default} unless --format says otherwise; default: -)")
    p.add_argument("--format", choices=sorted(set(OUTPUT_FORMATS.values())),
                   help="output format regardless of the --output suffix")


def build_parser() -> argparse.ArgumentParser:
    from jtcse import __version__

    parser = argparse.ArgumentParser(prog="jtcse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"jtcse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="great-expectations gate over the STS files and the corpus")
    _add_params(p)
    p.add_argument("--data-dir", default="data", help="the DVC-tracked data folder (default: data)")
    p.add_argument("--corpus", help="corpus file (default: data.corpus of --params)")
    p.add_argument("--docs-dir", help="write Data Docs HTML here")
    p.add_argument("--report", help="write a JSON summary here")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("train-tower", help="stage 1: unsupervised SimCSE on one tower")
    _add_run_args(p, "folder for the best tower (HF format)")
    p.add_argument("--tower", choices=["a", "b"], required=True, help="which tower (picks pretrain.seed_a / seed_b)")
    p.add_argument("--init", help="start from this checkpoint instead of model.base")
    p.set_defaults(func=cmd_train_tower)

    p = sub.add_parser("train", help="stage 2: joint JTCSE training of the twin")
    _add_run_args(p, "folder for the best twin (tower_a/, tower_b/, twin.json)")
    p.add_argument("--tower-a", required=True, help="stage-1 tower A")
    p.add_argument("--tower-b", required=True, help="stage-1 tower B")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="stage 3: distil the twin into one tower (JTCSE-D)")
    _add_run_args(p, "folder for the best student tower (HF format)")
    p.add_argument("--twin", required=True, help="trained twin folder")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="seven-task STS evaluation (Spearman x 100) or SentEval transfer (accuracy x 100)")
    p.add_argument("--suite", choices=["sts", "transfer"], default="sts",
                   help="sts (default): cosine Spearman on STS12-16, STS-B, SICK-R; transfer: logistic-regression "
                        "probe on MR, CR, SUBJ, MPQA, SST2, TREC, MRPC")
    p.add_argument("--model", required=True, help="tower, twin folder, package, or any HF / sentence-transformers model")
    p.add_argument("--model-b", help="second tower: evaluate --model and --model-b as a twin")
    p.add_argument("--pooling", choices=["cls", "mean"], default=None, help="tower pooling (default: cls, or the model's own)")
    p.add_argument("--combine", choices=["sum", "concat"], default="sum", help="how a twin's vectors combine (default: sum)")
    p.add_argument("--data-dir", help="folder of the STS TSV files (default: data/sts) or of the transfer tasks "
                                      "(default: transfer.data_dir)")
    p.add_argument("--params", help="settings file for the transfer suite (default: params.yaml if present)")
    p.add_argument("--output", required=True, help="JSON file of the per-task scores and their average")
    p.add_argument("--plot-data", help="also write a task,spearman (or task,accuracy) CSV (DVC bar plot)")
    p.add_argument("--name", help="row name in the printed table (default: the model folder's name)")
    p.add_argument("--batch-size", type=int, default=128, help="sentences per forward pass (default: 128)")
    p.add_argument("--max-length", type=int, default=128, help="truncation in tokens (default: 128)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the model runs (default: auto = cuda if available)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("encode", help="encode a text file (one sentence per line) to vectors",
                       description="Encode one sentence per line of --input; row i of the output is line i.")
    _add_model_args(p, batch_size=64)
    p.add_argument("--input", required=True, help="UTF-8 text, one sentence per line; - = standard input")
    _add_output_args(p, "vectors", stdout_default="jsonl")
    p.add_argument("--normalize", action="store_true", help="unit-length vectors (a dot product is then the cosine)")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("similarity", help="cosine similarity of two sentences, of line pairs, or a matrix",
                       description="Cosine similarity: of two sentences (printed), of line i of FILE_A with line i "
                                   "of FILE_B (--pairs), or of every line of FILE_A with every line of FILE_B "
                                   "(--matrix; FILE_A with itself when FILE_B is left out).")
    p.add_argument("sentences", nargs="*", metavar="SENTENCE", help="two sentences to compare")
    p.add_argument("--pairs", nargs=2, metavar=("FILE_A", "FILE_B"),
                   help="two files of as many lines: one score per line pair")
    p.add_argument("--matrix", nargs="+", metavar="FILE",
                   help="FILE_A [FILE_B]: the len(A) x len(B) matrix of cosines")
    _add_model_args(p, batch_size=64)
    _add_output_args(p, "scores of --pairs / --matrix", stdout_default="csv")
    p.set_defaults(func=cmd_similarity)

    from jtcse.mteb_adapter import register_cli as register_mteb
    from jtcse.packaging import register_cli as register_packaging
    from jtcse.tuning import register_cli as register_tuning

    register_mteb(sub)
    register_packaging(sub)
    register_tuning(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun, only rank 0 logs progress
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import errno

    from jtcse.errors import UserError
    from jtcse.training.guards import TrainingInterrupted

    # Bad input (a file, a setting, an option; jtcse.errors.UserError) or a full disk: one line on stderr and exit
    # status 2 (the retrain flow reads 2 as "do not retry"). Anything else is a bug: its traceback stays, exit 1.
    try:
        if args.command in TRAINING_COMMANDS:
            from jtcse.training import distributed

            nproc = _settings(args).runtime.nproc_per_node
            if nproc > 1 and not distributed.launched_by_torchrun():
                return distributed.relaunch(nproc, argv)
        args.func(args)
    except UserError as err:
        print(f"jtcse: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(f"jtcse: error: no space left on device{where}; free some space and rerun", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:  # SIGTERM/SIGINT: a checkpoint was written; 128 + signal number
        print(f"jtcse {args.command}: {stop}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a training loop: nothing half-written remains
        print(f"jtcse {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.command in TRAINING_COMMANDS:
            from jtcse.training import distributed

            distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
