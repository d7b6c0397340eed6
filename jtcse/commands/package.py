"""``jtcse package``: the release folder and tarball (:mod:`jtcse.release.packaging`)."""

from __future__ import annotations


def package_command(args) -> None:
    from jtcse.config import load_settings
    from jtcse.release.packaging import build_package

    result = build_package(
        load_settings(args.params),
        twin=args.twin,
        distilled=args.distilled,
        twin_metrics=args.twin_metrics,
        distilled_metrics=args.distilled_metrics,
        output_dir=args.output_dir,
        metrics_root=args.metrics_root,
        data_dvc=args.data_dvc,
        licenses=args.licenses or None,
        check=not args.no_check,
        base_metrics=args.base_metrics,
        base_mean_metrics=args.base_mean_metrics,
        twin_transfer=args.twin_transfer,
        distilled_transfer=args.distilled_transfer,
    )
    print(f"package -> {result.path} ({result.files} files); tarball -> {result.tarball}; release -> {result.release}")


def package_command_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "package", help="build the release folder + tarball (distilled model, twin, model card, checksums)"
    )
    p.add_argument(
        "--params", default="params.yaml", help="settings file (package.name / package.version name the folder)"
    )
    p.add_argument("--twin", required=True, help="twin folder (tower_a/, tower_b/, twin.json)")
    p.add_argument("--distilled", required=True, help="distilled single tower (HF folder)")
    p.add_argument("--twin-metrics", required=True, help="seven-task STS JSON of the twin")
    p.add_argument("--distilled-metrics", required=True, help="seven-task STS JSON of the distilled model")
    p.add_argument(
        "--base-metrics",
        help="seven-task STS JSON of the untrained base with CLS pooling (a comparison row in the model card)",
    )
    p.add_argument("--base-mean-metrics", help="seven-task STS JSON of the untrained base with mean pooling")
    p.add_argument("--twin-transfer", help="SentEval transfer JSON of the twin (adds the transfer table to the card)")
    p.add_argument("--distilled-transfer", help="SentEval transfer JSON of the distilled model")
    p.add_argument("--output-dir", default="models", help="writes <output-dir>/<name>-<version>/ and .tar.gz")
    p.add_argument(
        "--metrics-root",
        help="folder of <stage>/summary.json training times (default: two levels above --twin-metrics)",
    )
    p.add_argument("--data-dvc", default="data.dvc", help="DVC pointer of the data (its md5 is the data version)")
    p.add_argument("--licenses", default="data/licenses", help="licence texts copied into the package ('' = none)")
    p.add_argument("--no-check", action="store_true", help="skip loading the packaged models back (faster)")
    p.set_defaults(func=package_command)
