"""``jtcse report``: the STS or transfer results table, bar chart and plot data of ``reports/``
(:mod:`jtcse.evaluation.report`)."""

from __future__ import annotations


def report_command(args) -> None:
    from jtcse.evaluation.report import load_rows, write_report

    named = {f"base ({args.base_pooling} pooling)": args.base}
    if args.base_pooling != "mean":  # with mean-pooled models, --base is already the mean-pooled base
        named["base (mean pooling)"] = args.base_mean
    rows = load_rows({**named, "twin (JTCSE)": args.twin, "distilled (JTCSE-D)": args.distilled})
    print(write_report(rows, args.suite, markdown=args.markdown, plot=args.plot, plot_data_path=args.plot_data))


def report_command_parser(subparsers) -> None:
    p = subparsers.add_parser("report", help="STS or transfer results table, bar chart and plot data")
    p.add_argument("--suite", choices=("sts", "transfer"), default="sts", help="which metrics files these are")
    p.add_argument("--base", help="metrics of the base checkpoint with --base-pooling (dvc: cls)")
    p.add_argument("--base-pooling", default="cls", help="the pooling --base was evaluated with (its label)")
    p.add_argument("--base-mean", help="metrics of the base checkpoint with mean pooling")
    p.add_argument("--twin", help="metrics of the JTCSE twin")
    p.add_argument("--distilled", help="metrics of the distilled JTCSE-D tower")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--plot", help="write the bar chart (PNG) here")
    p.add_argument("--plot-data", help="write task,model,score CSV here (DVC plot)")
    p.set_defaults(func=report_command)
