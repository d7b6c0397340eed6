from jtcse.evaluation.sts import DEV_TASKS, STS_TASKS, STSEvaluator, format_table

__all__ = ["DEV_TASKS", "STS_TASKS", "STSEvaluator", "format_table"]
