"""``jtcse encode`` and ``jtcse similarity``: vectors and cosine similarities of sentences, as .npy, .csv or .jsonl."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jtcse.commands.common import add_device
from jtcse.errors import UserError

#: Suffixes `encode --output` and `similarity --output` understand; "-" is standard output.
OUTPUT_FORMATS = {".npy": "npy", ".csv": "csv", ".jsonl": "jsonl"}


def read_sentences(name: str) -> list[str]:
    """One sentence per line of a UTF-8 file ("-": standard input); warns once about blank lines."""
    from jtcse.data.readers import blank_lines_warning
    from jtcse.data.readers import read_sentences as read

    if name == "-" and sys.stdin is None:  # started with standard input closed (`<&-`)
        raise UserError("--input -: standard input is closed; pipe the sentences in, or give a file")
    lines = read(name, stdin=sys.stdin.buffer)
    warning = blank_lines_warning("<stdin>" if name == "-" else name, lines)
    if warning:
        print(f"jtcse: warning: {warning}", file=sys.stderr)
    return lines


def output_format(name: str, given: str | None, stdout_default: str) -> str:
    """The --format, else the output's suffix (.npy, .csv, .jsonl); an unknown suffix is an error (and so is
    standard output when it is closed)."""
    if name == "-" and sys.stdout is None:  # started with standard output closed (`>&-`): refuse before any work
        raise UserError("--output -: standard output is closed; give a file name (e.g. --output vectors.npy)")
    if given:
        return given
    if name == "-":
        return stdout_default
    suffix = Path(name).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UserError(f"{name}: unknown output suffix {suffix or '(none)'!r}; use .npy, .csv or .jsonl (or --format)")
    return OUTPUT_FORMATS[suffix]


def write_rows(name: str, fmt: str, values, labels: list[dict] | None = None, key: str = "embedding") -> None:
    """``values`` (a matrix: one row per sentence; or a vector: one score per pair) as .npy, .csv or .jsonl.

    A .jsonl line is ``labels[i]`` plus ``key``: the row. Floats keep 9 significant digits, so a float32
    reads back exactly. A file is written atomically (jtcse.io): never half of one.
    """
    import errno
    import io
    import json

    import numpy as np

    from jtcse.io import atomic_write_bytes

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
            text = "".join(
                json.dumps(
                    {**label, key: [exact(v) for v in row] if values.ndim == 2 else exact(row)}, ensure_ascii=False
                )
                + "\n"
                for label, row in zip(labels, values.tolist())
            )
        payload = text.encode("utf-8")
    if name == "-":
        try:
            sys.stdout.buffer.write(payload)
            sys.stdout.flush()
        except BrokenPipeError:  # the reader went away (`| head -c 100`): part of the rows were never read
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so that Python's own flush at exit does not fail again
            os.close(devnull)
            raise UserError(
                f"--output -: standard output was closed before all {len(values)} rows were read (broken pipe); "
                "write to a file with --output to keep them all"
            ) from None
        return
    try:
        atomic_write_bytes(name, payload)
    except OSError as err:
        # A write or fsync that fails carries no file name; the one-line "no space left" error names the output.
        if err.errno == errno.ENOSPC and not err.filename:
            raise OSError(err.errno, err.strerror, name) from err
        raise


def _add_model_args(p: argparse.ArgumentParser, batch_size: int) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="package, twin folder, tower, or any local Hugging Face / sentence-transformers model",
    )
    p.add_argument(
        "--pooling",
        choices=["cls", "mean"],
        default=None,
        help="sentence vector of a single tower (default: the model's own, else cls)",
    )
    p.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"sentences per forward pass (default: {batch_size})"
    )
    add_device(p)
    p.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="torch, or onnx: the model's ONNX export run by onnxruntime on the CPU (a package's distilled "
        "model; needs the onnx extra)",
    )
    p.add_argument(
        "--file-name",
        default=None,
        help="with --backend onnx: the ONNX file, relative to the model folder (default: onnx/model.onnx; "
        "the int8 variant of a package: onnx/model_qint8_avx512_vnni.onnx)",
    )


def _add_output_args(p: argparse.ArgumentParser, what: str, stdout_default: str) -> None:
    p.add_argument(
        "--output",
        default="-",
        help=f"{what}: .npy, .csv or .jsonl, chosen by the suffix; - = standard output "
        f"({stdout_default} unless --format says otherwise; default: -)",
    )
    p.add_argument(
        "--format", choices=sorted(set(OUTPUT_FORMATS.values())), help="output format regardless of the --output suffix"
    )


def encode_command(args) -> None:
    from jtcse.api import load
    from jtcse.encoding import check_batch_size
    from jtcse.io import check_output_file

    if args.output != "-":
        check_output_file(args.output, parent_must_exist=True)
    check_batch_size(args.batch_size)
    fmt = output_format(args.output, args.format, stdout_default="jsonl")
    lines = read_sentences(args.input)
    encoder = load(args.model, pooling=args.pooling, device=args.device, backend=args.backend, file_name=args.file_name)
    vectors = encoder.encode(
        lines, batch_size=args.batch_size, normalize_embeddings=args.normalize, show_progress_bar=args.output != "-"
    )
    write_rows(args.output, fmt, vectors, [{"sentence": line} for line in lines])
    where = "standard output" if args.output == "-" else args.output
    print(f"{len(lines)} sentences -> {where} ({fmt}, {vectors.shape[0]} x {vectors.shape[1]})", file=sys.stderr)


def similarity_command(args) -> None:
    from jtcse.api import load
    from jtcse.data.readers import DataError

    given = [args.sentences != [], bool(args.pairs), bool(args.matrix)]
    if sum(given) != 1 or (args.sentences and len(args.sentences) != 2) or (args.matrix and len(args.matrix) > 2):
        raise UserError("similarity takes two sentences, or --pairs FILE_A FILE_B, or --matrix FILE_A [FILE_B]")
    fmt = output_format(args.output, args.format, stdout_default="csv")
    encoder = load(args.model, pooling=args.pooling, device=args.device, backend=args.backend, file_name=args.file_name)
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
        raise DataError(
            f"--pairs: {args.pairs[0]} has {len(left)} lines but {args.pairs[1]} has {len(right)}; "
            "line i of one is compared with line i of the other"
        )
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


def encode_command_parser(subparsers) -> None:
    """Add ``encode`` and ``similarity``."""
    p = subparsers.add_parser(
        "encode",
        help="encode a text file (one sentence per line) to vectors",
        description="Encode one sentence per line of --input; row i of the output is line i.",
    )
    _add_model_args(p, batch_size=64)
    p.add_argument("--input", required=True, help="UTF-8 text, one sentence per line; - = standard input")
    _add_output_args(p, "vectors", stdout_default="jsonl")
    p.add_argument("--normalize", action="store_true", help="unit-length vectors (a dot product is then the cosine)")
    p.set_defaults(func=encode_command)

    p = subparsers.add_parser(
        "similarity",
        help="cosine similarity of two sentences, of line pairs, or a matrix",
        description="Cosine similarity: of two sentences (printed), of line i of FILE_A with "
        "line i of FILE_B (--pairs), or of every line of FILE_A with every line of "
        "FILE_B (--matrix; FILE_A with itself when FILE_B is left out).",
    )
    p.add_argument("sentences", nargs="*", metavar="SENTENCE", help="two sentences to compare")
    p.add_argument(
        "--pairs", nargs=2, metavar=("FILE_A", "FILE_B"), help="two files of as many lines: one score per line pair"
    )
    p.add_argument("--matrix", nargs="+", metavar="FILE", help="FILE_A [FILE_B]: the len(A) x len(B) matrix of cosines")
    _add_model_args(p, batch_size=64)
    _add_output_args(p, "scores of --pairs / --matrix", stdout_default="csv")
    p.set_defaults(func=similarity_command)
