"""Measuring a model: STS (:mod:`~jtcse.evaluation.sts`, Spearman) and the SentEval transfer tasks
(:mod:`~jtcse.evaluation.transfer` with the probes of :mod:`~jtcse.evaluation.probe`), each a dict of named metrics
with one primary; mteb's own evaluation over any jtcse model (:mod:`~jtcse.evaluation.mteb_adapter`); the tables
and charts of ``reports/`` (:mod:`~jtcse.evaluation.report`)."""
