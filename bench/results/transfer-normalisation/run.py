"""Is the twin's transfer gain over the base the vectors' normalisation? The base, mean pooling, as a twin of itself
with each vector L2-normalised before the sum (the shipped twin's combination), on the pipeline's transfer protocol."""
import json
import sys

from jtcse.config import load_settings
from jtcse.api import load
from jtcse.encoding import TwinEncoder
from jtcse.evaluation.transfer import TransferEvaluator

settings = load_settings("params.yaml")
tower = load(settings.model.base, pooling="mean", max_length=128)
encoder = TwinEncoder(tower, tower, "sum", normalize=True)
evaluator = TransferEvaluator.from_settings(settings.transfer, batch_size=128, data_dir="data/transfer", show_progress=False)
scores = evaluator(encoder)
json.dump(scores, open(sys.argv[1], "w"), indent=2)
print(scores)
