from jtcse.evaluation.sts import DEV_MEAN, DEV_TASKS, STS_TASKS, STSEvaluator, dev_evaluator, format_table

__all__ = ["DEV_MEAN", "DEV_TASKS", "STS_TASKS", "STSEvaluator", "dev_evaluator", "format_table"]
