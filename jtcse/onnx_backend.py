"""The distilled model as ONNX: the export (torch's ONNX exporter, onnxruntime's dynamic int8 quantiser) and an
encoder that runs it with onnxruntime (``jtcse.load(path, backend="onnx")``).

The files sit in sentence-transformers' layout, inside the sentence-transformers folder (beside the HF weights),
where sentence-transformers (``backend="onnx"``), optimum and other ONNX runtimes look for them::

    onnx/model.onnx                     float32: inputs input_ids, attention_mask[, token_type_ids] (int64,
                                        batch_size x sequence_length), output last_hidden_state (the token states)
    onnx/model_qint8_avx512_vnni.onnx   the same with int8 weights (dynamic quantisation: activations are
                                        quantised at run time), named as sentence-transformers'
                                        ``export_dynamic_quantized_onnx_model`` names it (package.onnx_quantization)

Pooling is not in the graph (as in sentence-transformers' exports): the encoder pools the token states as the
folder's ``1_Pooling/config.json`` says. sentence-transformers' own ONNX export and loader need optimum, whose
ONNX package pins transformers < 4.58; with transformers 5 both sides are here. onnx and onnxruntime are the
optional ``[onnx]`` extra: without them ``jtcse package`` skips these files (one log line) and the package still
loads with the torch backend.
"""

from __future__ import annotations

import importlib.util
import logging
import time
import warnings
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from jtcse.encoding import Encoder, pick_device
from jtcse.errors import UserError
from jtcse.io import atomic_path

if TYPE_CHECKING:
    from jtcse.config import Settings

log = logging.getLogger(__name__)

#: ``backend=`` values of :func:`jtcse.load` (named as in sentence-transformers).
BACKENDS = ("torch", "onnx")
ONNX_DIR = "onnx"
#: The float32 export, relative to the model folder: ``file_name``'s default.
DEFAULT_FILE = f"{ONNX_DIR}/model.onnx"
#: Opset 17 has LayerNormalization as one operator; every onnxruntime since 1.14 runs it.
OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
#: optimum's dynamic-quantisation presets (what sentence-transformers' export_dynamic_quantized_onnx_model uses):
#: preset -> weight type. All four quantise weights per channel, full 8-bit range, activations as uint8.
QUANTIZATIONS = {"arm64": "qint8", "avx2": "quint8", "avx512": "qint8", "avx512_vnni": "qint8"}
#: Two sentences of different lengths: the traced graph keeps the padding mask.
EXAMPLE = ["A man is playing a guitar on the stage.", "Hello"]
#: The packaging self-check: the float export reproduces the torch vectors within this (relative to the largest
#: component); the int8 export keeps at least this cosine with them (a broken quantisation gives about 0).
FLOAT_TOLERANCE = 1e-4
INT8_MIN_COSINE = 0.9


def quantized_file_name(quantization: str) -> str:
    """``onnx/model_qint8_avx512_vnni.onnx``: sentence-transformers' name for a dynamically quantised export."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {sorted(QUANTIZATIONS)}, got {quantization!r}")
    return f"{ONNX_DIR}/model_{QUANTIZATIONS[quantization]}_{quantization}.onnx"


def missing_packages(*names: str) -> list[str]:
    """Which of ``names`` (default: onnx and onnxruntime) cannot be imported."""
    return [name for name in names or ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]


# ------------------------------------------------------------------------------------------------ export


@contextmanager
def _quiet_export():
    """The tracer's warnings, the legacy exporter's deprecation note and the quantiser's per-tensor notes (logged
    on the root logger) are for their authors, not for whoever runs ``jtcse package``."""

    def drop(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(drop)


def export_onnx(model_dir: str | Path, *, quantization: str = "avx512_vnni", opset: int = OPSET) -> dict:
    """Write ``onnx/model.onnx`` (float32) and its int8 variant into ``model_dir`` (an HF or sentence-transformers
    model folder, weights in safetensors), each atomically. Returns what ``jtcse_package.json`` records of them.

    The TorchScript exporter (``dynamo=False``) is used: for these BERT-like encoders its graph ran 1.3x (float)
    to 1.6x (int8) faster in onnxruntime than the torch.export-based exporter's, exported in a third of the time,
    and needs no onnxscript.
    """
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from jtcse.modeling.towers import load_tower, transformer_dir

    model_dir = Path(model_dir)
    weight_type = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[QUANTIZATIONS[quantization]]
    started = time.perf_counter()
    model, tokenizer = load_tower(str(model_dir))
    model = model.float().eval()
    model.pooler = None  # not part of the output; nothing to trace

    class TokenStates(torch.nn.Module):
        """Positional inputs (in the order of ``names``) -> last_hidden_state: the graph that is traced."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(**dict(zip(names, tensors))).last_hidden_state

    names = [name for name in INPUT_NAMES if name in tokenizer.model_input_names]
    example = tokenizer(EXAMPLE, padding=True, return_tensors="pt")
    root = Path(transformer_dir(str(model_dir)))
    float_path, int8_path = root / DEFAULT_FILE, root / quantized_file_name(quantization)
    float_path.parent.mkdir(exist_ok=True)
    with _quiet_export(), torch.no_grad():
        with atomic_path(float_path) as tmp:
            torch.onnx.export(
                TokenStates().eval(),
                tuple(example[name] for name in names),
                str(tmp),
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes={name: {0: "batch_size", 1: "sequence_length"} for name in [*names, OUTPUT_NAME]},
                opset_version=opset,
                dynamo=False,
            )
        with atomic_path(int8_path) as tmp:
            quantize_dynamic(float_path, tmp, weight_type=weight_type, per_channel=True, reduce_range=False)
    log.info(
        "ONNX export: %s (%.1f MB) and %s (%.1f MB) in %.1f s",
        float_path,
        float_path.stat().st_size / 1e6,
        int8_path.name,
        int8_path.stat().st_size / 1e6,
        time.perf_counter() - started,
    )
    prefix = root.relative_to(model_dir).as_posix()
    prefix = "" if prefix == "." else f"{prefix}/"
    return {
        "float32": f"{prefix}{DEFAULT_FILE}",
        "int8": f"{prefix}{quantized_file_name(quantization)}",
        "quantization": quantization,
        "opset": opset,
        "inputs": names,
        "output": OUTPUT_NAME,
    }


def sts_of_variants(model_dir: str | Path, settings: Settings, entry: dict) -> dict[str, dict[str, float]]:
    """The seven-task STS average of the torch model and of both ONNX files (``package.onnx_sts``), and how many
    distinct sentences per second each encoded during that evaluation (one pass on this machine: indicative)."""
    from jtcse.api import load
    from jtcse.evaluation.sts import STSEvaluator

    evaluator = STSEvaluator(settings.data.sts_dir, batch_size=settings.evaluate.batch_size)
    sentences = len({s for p in evaluator.pairs.values() for s in (*p.sentence1, *p.sentence2)})
    results = {}
    for variant, kwargs in (
        ("torch", {}),
        ("onnx float32", {"backend": "onnx", "file_name": entry["float32"]}),
        ("onnx int8", {"backend": "onnx", "file_name": entry["int8"]}),
    ):
        encoder = load(model_dir, device="cpu", verify=False, **kwargs)
        started = time.perf_counter()
        scores = evaluator(encoder)
        seconds = time.perf_counter() - started
        results[variant] = {"avg": round(scores["avg"], 2), "sentences_per_second": round(sentences / seconds, 1)}
        log.info("STS avg of the %s model: %.2f (%.0f sentences/s)", variant, scores["avg"], sentences / seconds)
    return results


def package_onnx(model_dir: str | Path, settings: Settings) -> dict | None:
    """The ONNX files of a package's distilled folder, as ``package.onnx*`` say; None when they are skipped (the
    setting is off, or onnx/onnxruntime are not installed: one log line says so)."""
    if not settings.package.onnx:
        log.info("ONNX files skipped: package.onnx is false")
        return None
    missing = missing_packages()
    if missing:
        log.warning(
            "ONNX files skipped: %s not installed (the [onnx] extra); the package loads with the torch backend",
            " and ".join(missing),
        )
        return None
    entry = export_onnx(model_dir, quantization=settings.package.onnx_quantization)
    if settings.package.onnx_sts:
        entry["sts"] = sts_of_variants(model_dir, settings, entry)
    return entry


def check_onnx(model_dir: str | Path, entry: dict | None, sentences: list[str], want) -> None:
    """Packaging's self-check of the ONNX files: the float export gives the torch vectors ``want``, the int8 one
    points the same way (see FLOAT_TOLERANCE, INT8_MIN_COSINE)."""
    import numpy as np

    if not entry:
        return
    scale = max(1.0, float(np.abs(want).max()))
    got = load_onnx(model_dir, file_name=entry["float32"]).encode(sentences)
    if got.shape != want.shape or not np.isfinite(got).all() or np.abs(got - want).max() > FLOAT_TOLERANCE * scale:
        raise RuntimeError(f"self-check: {entry['float32']} does not reproduce the distilled model's vectors")
    got = load_onnx(model_dir, file_name=entry["int8"]).encode(sentences)
    cosines = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1) + 1e-12)
    if got.shape != want.shape or not np.isfinite(got).all() or cosines.min() < INT8_MIN_COSINE:
        raise RuntimeError(
            f"self-check: {entry['int8']} vectors are too far from the distilled model's (min cosine "
            f"{cosines.min():.3f} < {INT8_MIN_COSINE})"
        )


# ------------------------------------------------------------------------------------------------ runtime


class OnnxEncoder(Encoder):
    """An ONNX export run by onnxruntime on the CPU, with the tokenizer and pooling of its model folder:
    ``encode`` takes the torch encoders' (and sentence-transformers') arguments and gives the same vectors."""

    def __init__(self, session, tokenizer, pooling: str, max_length: int, dimension: int, file: Path):
        import torch

        self.session, self.tokenizer, self.pooling, self.file = session, tokenizer, pooling, file
        self.max_length = min(max_length, tokenizer.model_max_length)
        self._dimension = dimension
        self.device = torch.device("cpu")
        self._inputs = {i.name: i.type for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        self._output = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_seq_length(self) -> int:
        return self.max_length

    def to(self, device) -> OnnxEncoder:
        import torch

        target = pick_device(device) if isinstance(device, str) else torch.device(device)
        if target.type != "cpu":
            raise UserError(
                f"{self.file}: the onnx backend runs on the CPU (onnxruntime's CPU build), not {target}; "
                "use backend='torch' for a GPU"
            )
        return self

    def embed(self, sentences: list[str]):
        import numpy as np
        import torch

        from jtcse.modeling.towers import pool

        batch = self.tokenizer(
            sentences, padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        feeds = {}
        for name, kind in self._inputs.items():
            if name in batch:
                value = batch[name]
            elif name == "token_type_ids":
                value = np.zeros_like(batch["input_ids"])
            else:
                raise UserError(f"{self.file}: the model needs the input {name!r}, which its tokenizer does not give")
            feeds[name] = value.astype(np.int32 if kind == "tensor(int32)" else np.int64)
        states = self.session.run([self._output], feeds)[0]
        return pool(torch.from_numpy(states), torch.from_numpy(batch["attention_mask"]), self.pooling)


def onnx_file(path: str | Path, file_name: str | None) -> Path:
    """The ONNX file ``file_name`` (relative to the model folder; default ``onnx/model.onnx``) of ``path``."""
    from jtcse.modeling.towers import transformer_dir

    path = Path(path)
    name = file_name or DEFAULT_FILE
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        raise UserError(f"file_name {name!r} must be a path inside the model folder (like {DEFAULT_FILE!r})")
    candidates = [path / relative, Path(transformer_dir(str(path))) / relative]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise UserError(
            f"{candidates[0]}: no such ONNX file (backend='onnx', file_name={name!r}); `jtcse package` writes "
            f"{DEFAULT_FILE} and {quantized_file_name('avx512_vnni')} when onnx and onnxruntime are installed"
        )
    return found


def load_onnx(
    path: str | Path,
    *,
    file_name: str | None = None,
    pooling: str | None = None,
    max_length: int | None = None,
    device: str = "auto",
) -> OnnxEncoder:
    """Open ``<path>/<file_name>`` with onnxruntime, with the folder's tokenizer, pooling and max_seq_length."""
    from jtcse.api import _saved_max_length, _saved_pooling
    from jtcse.modeling.towers import transformer_dir

    path = Path(path)
    if device.startswith("cuda"):
        raise UserError("the onnx backend runs on the CPU (onnxruntime's CPU build); use backend='torch' for cuda")
    file = onnx_file(path, file_name)
    if missing_packages("onnxruntime"):
        raise UserError(
            f"backend='onnx' needs onnxruntime, which is not installed (the [onnx] extra); cannot run {file}"
        )
    import onnxruntime as ort
    import torch
    from transformers import AutoConfig, AutoTokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as the torch backend
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own error types: a truncated, foreign or corrupted file
        raise UserError(f"{file}: onnxruntime cannot open it ({str(err).splitlines()[0][:200]})") from None
    hf_root = transformer_dir(str(path))
    tokenizer = AutoTokenizer.from_pretrained(hf_root)
    dimension = int(AutoConfig.from_pretrained(hf_root).hidden_size)
    return OnnxEncoder(
        session, tokenizer, pooling or _saved_pooling(path), max_length or _saved_max_length(path), dimension, file
    )
