"""Is the twin's transfer gain over the base the vectors' normalisation? The base, mean pooling, as a twin of itself
with each vector L2-normalised before the sum (the shipped twin's combination), on the pipeline's transfer protocol.

Run from the repository root: python bench/results/transfer-normalisation/run.py OUT.json"""

import json
import sys

from jtcse.api import load
from jtcse.config import load_settings
from jtcse.encoding import TwinEncoder
from jtcse.evaluation.transfer import TransferEvaluator

settings = load_settings("params.yaml")
tower = load(settings.model.base, pooling="mean", max_length=128)
encoder = TwinEncoder(tower, tower, "sum", normalize=True)
evaluator = TransferEvaluator.from_settings(
    settings.transfer, batch_size=128, data_dir="data/transfer", show_progress=False
)
scores = evaluator(encoder)
with open(sys.argv[1], "w", encoding="utf-8") as out:
    json.dump(scores, out, indent=2)
print(scores)
