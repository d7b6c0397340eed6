"""The stage cache the training benchmarks share (bench/quality.py, bench/ablation.py): each stage of a seed is
trained at most once, kept in a work dir and reused by any later run, or another benchmark, that needs the same
thing, and every test score is cached beside the model it belongs to.

Layout of a work dir (``--reuse-dir``; keys and folder names are part of the contract: existing work dirs are
reused as they are)::

    seed<s>/<stage>/                  the stage's model (tower_a, tower_b, twin_jtcse, twin_tncse, distilled,
                                      simcse_long, ablation_<cell>)
    seed<s>/<stage>.done.json         fingerprint (settings + inputs), kind, wall seconds, summary
    seed<s>/<stage>.test.json         the seven test tasks, keyed by the training's fingerprint
    seed<s>/checkpoints/<stage>/      resumable state while the stage trains (removed when it is done)
    seed<s>/metrics/<stage>/          its train/eval/diagnostics CSVs
    scores-by-content/<identity>.json test scores of an encoder, keyed by its weights and pooling

Seed ``s`` (>= 1) shifts pretrain.tower_a.seed, pretrain.tower_b.seed, train.seed and distill.seed by
``SEED_STRIDE * (s - 1)``, so seed 1 is exactly the params file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.workspace")

SEED_STRIDE = 1000


def seeded_overrides(settings, seed: int) -> dict[str, int]:
    if seed < 1:
        raise SystemExit(f"--seeds must be positive integers (seed 1 = params.yaml), got {seed}")
    shift = SEED_STRIDE * (seed - 1)
    return {
        "pretrain.tower_a.seed": settings.pretrain.tower_a.seed + shift,
        "pretrain.tower_b.seed": settings.pretrain.tower_b.seed + shift,
        "train.seed": settings.train.seed + shift,
        "distill.seed": settings.distill.seed + shift,
    }


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class NotFinished(Exception):
    """A workspace that may not train (quality's --report-only): a stage or test score is not in the work dir yet."""


@dataclass
class Stage:
    """A trained model in the work dir: where it is, how long it took (wall), what it depends on."""

    name: str
    path: Path
    seconds: float
    fingerprint: str
    reused: bool
    requires: list[Stage] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    synthetic: bool = False  # a row made of other stages, with no training of its own (the ensemble)
    #: The finished stage of another name whose model this one reuses (same settings and inputs), and its
    #: fingerprint: the key of that stage's cached test scores. None when the stage is its own.
    source: str | None = None
    source_fingerprint: str | None = None

    @property
    def scores_key(self) -> tuple[str, str]:
        """(name, fingerprint) of the model's own training: where its test scores are cached and what they match."""
        return (self.source or self.name), (self.source_fingerprint or self.fingerprint)

    def _walk(self) -> dict[str, Stage]:
        found: dict[str, Stage] = {}

        def walk(stage: Stage) -> None:
            found.setdefault(stage.name, stage)
            for dep in stage.requires:
                walk(dep)

        walk(self)
        return found

    def total_seconds(self) -> float:
        """Wall time of every stage this model needs from the base checkpoint (shared stages counted once)."""
        return sum(s.seconds for s in self._walk().values())

    def breakdown(self) -> dict[str, float]:
        return {name: round(s.seconds, 2) for name, s in self._walk().items() if not s.synthetic}

    def reused_stages(self) -> list[str]:
        return sorted(name for name, s in self._walk().items() if s.reused and not s.synthetic)


class Workspace:
    """Trains each stage at most once per seed; with a persistent work dir, finished stages are reused across
    runs when their settings and inputs are unchanged, and an interrupted stage resumes from its checkpoint."""

    def __init__(self, root: Path, base_settings, train: bool = True):
        self.root = root
        self.base_settings = base_settings
        #: Off (--report-only): a stage or test score that is not already in the work dir raises NotFinished.
        self.train = train
        self.cache: dict[tuple[int, str], Stage] = {}

    def settings_for(self, seed: int, extra: dict[str, Any] | None = None):
        from jtcse.config import apply_overrides

        return apply_overrides(self.base_settings, {**seeded_overrides(self.base_settings, seed), **(extra or {})})

    def _run(self, seed: int, name: str, kind: str, section: str, settings, requires: list[Stage], train) -> Stage:
        """``kind`` names what ``train`` does beyond its settings and inputs (tower A and tower B read the same
        pretrain section but train with different seeds): only a finished stage of the same kind may stand in
        for this one under another name."""
        key = (seed, name)
        if key in self.cache:
            return self.cache[key]
        folder = self.root / f"seed{seed}"
        output, checkpoints, metrics = folder / name, folder / "checkpoints" / name, folder / "metrics" / name
        marker = folder / f"{name}.done.json"
        sections = {k: getattr(settings, k).model_dump(mode="json") for k in ("model", "data", "evaluate", section)}
        # The benchmark trains in this process, so runtime.nproc_per_node (read only by the CLI's torchrun
        # relaunch) changes nothing here and must not invalidate finished stages.
        # Nor do the CPU threads of this process: a benchmark resumed with another runtime.threads reuses its work.
        sections["runtime"] = settings.runtime.model_dump(mode="json", exclude={"nproc_per_node", "threads"})
        requires_fingerprints = [r.fingerprint for r in requires]

        def fingerprint_as(stage_name: str) -> str:
            return _digest({"stage": stage_name, "settings": sections, "requires": requires_fingerprints})

        fingerprint = fingerprint_as(name)
        stale = False
        if marker.is_file() and output.is_dir():
            done = json.loads(marker.read_text(encoding="utf-8"))
            if done.get("fingerprint") == fingerprint:
                log.info("seed %d: reusing %s from %s (trained in %.1f s)", seed, name, output, done["seconds"])
                stage = Stage(
                    name, output, float(done["seconds"]), fingerprint, True, requires, done.get("summary", {})
                )
                self.cache[key] = stage
                return stage
            stale = True
        if (twin := self._same_training(folder, fingerprint_as, kind)) is not None:
            # e.g. quality's twin_jtcse and ablation's ablation_stream3 when the defaults are stream x 3
            source, done = twin
            log.info(
                "seed %d: reusing %s for %s: trained with the same settings and inputs (%.1f s)",
                seed,
                folder / source,
                name,
                done["seconds"],
            )
            stage = Stage(
                name,
                folder / source,
                float(done["seconds"]),
                fingerprint,
                True,
                requires,
                done.get("summary", {}),
                source=source,
                source_fingerprint=done["fingerprint"],
            )
            self.cache[key] = stage
            return stage
        if not self.train:
            raise NotFinished(f"seed {seed}: {name} is not trained")
        if stale:
            log.info("seed %d: %s in %s was made with other settings or inputs; retraining", seed, name, folder)
        from jtcse.training.checkpoints import latest_checkpoint

        resumed = latest_checkpoint(checkpoints) is not None  # the trainer resumes only with the same fingerprint
        log.info("seed %d: training %s -> %s%s", seed, name, output, " (a checkpoint exists)" if resumed else "")
        started = time.perf_counter()
        result = train(output=output, checkpoint_dir=checkpoints, metrics_dir=metrics)
        seconds = time.perf_counter() - started
        summary = {
            "dev_metric": settings.evaluate.selection,
            "best_dev": round(result.best_metric, 4),
            "best_step": result.best_step,
            "initial_dev": round(result.initial_metric, 4),
            "steps": result.steps,
            "trainer_seconds": round(result.seconds, 2),
            "checkpoint_found": resumed,
        }
        shutil.rmtree(checkpoints, ignore_errors=True)  # the model is final: resumable state is no longer needed
        from jtcse.io import atomic_write_json

        atomic_write_json(
            marker, {"fingerprint": fingerprint, "kind": kind, "seconds": round(seconds, 3), "summary": summary}
        )
        log.info(
            "seed %d: %s done in %.1f s (best dev %.2f at step %d)",
            seed,
            name,
            seconds,
            result.best_metric,
            result.best_step,
        )
        stage = Stage(name, output, seconds, fingerprint, False, requires, summary)
        self.cache[key] = stage
        return stage

    @staticmethod
    def _same_training(folder: Path, fingerprint_as, kind: str) -> tuple[str, dict] | None:
        """A finished stage of another name and the same kind in this seed's folder whose fingerprint, recomputed
        under its own name, is the one it stored: it was trained with these very settings and inputs. Markers
        written without a kind are reused only under their own name."""
        for marker in sorted(folder.glob("*.done.json")):
            other = marker.name.removesuffix(".done.json")
            if not (folder / other).is_dir():
                continue
            done = json.loads(marker.read_text(encoding="utf-8"))
            if done.get("kind") == kind and done.get("fingerprint") == fingerprint_as(other):
                return other, done
        return None

    def scores_by_content(self, identity: str, evaluate) -> tuple[dict[str, float], float, bool]:
        """The seven test tasks of the encoder whose weights and pooling hash to ``identity`` (see
        :func:`encoder_identity`), cached by that content: a stage that kept its step 0 ships its input's weights,
        and its scores are then the input's, read here instead of being computed again."""
        from jtcse.io import atomic_write_json

        cache = self.root / "scores-by-content" / f"{identity}.json"
        if cache.is_file():
            stored = json.loads(cache.read_text(encoding="utf-8"))
            log.info("test scores of an identical encoder from %s", cache)
            return stored["scores"], stored["eval_s"], True
        if not self.train:
            raise NotFinished(f"no test scores of encoder {identity} yet")
        started = time.perf_counter()
        scores = evaluate()
        eval_s = time.perf_counter() - started
        atomic_write_json(cache, {"scores": scores, "eval_s": round(eval_s, 2)})
        return scores, eval_s, False

    def test_scores(
        self, seed: int, stage: Stage, evaluate, identity: str | None = None
    ) -> tuple[dict[str, float], float, bool]:
        """The seven test tasks of a trained model, cached beside it (``<name>.test.json``, keyed by the training's
        fingerprint) so a rerun, or another benchmark reusing the model, does not evaluate it again; with an
        ``identity`` (:func:`encoder_identity`), an identical encoder's scores are reused too.
        Returns the scores, the seconds the evaluation took when it ran, and whether they came from the cache."""
        from jtcse.io import atomic_write_json

        name, fingerprint = stage.scores_key
        cache = self.root / f"seed{seed}" / f"{name}.test.json"
        if cache.is_file():
            stored = json.loads(cache.read_text(encoding="utf-8"))
            if stored.get("fingerprint") == fingerprint:
                log.info("seed %d: test scores of %s from %s", seed, stage.name, cache)
                return stored["scores"], stored["eval_s"], True
        if not self.train and identity is None:
            raise NotFinished(f"seed {seed}: no test scores of {stage.name} yet")
        if identity is not None:
            scores, eval_s, cached = self.scores_by_content(identity, evaluate)
        else:
            started = time.perf_counter()
            scores, cached = evaluate(), False
            eval_s = time.perf_counter() - started
        atomic_write_json(cache, {"fingerprint": fingerprint, "scores": scores, "eval_s": round(eval_s, 2)})
        return scores, eval_s, cached

    def tower(self, seed: int, which: str) -> Stage:
        from jtcse.training.stages import train_tower

        settings = self.settings_for(seed)
        return self._run(
            seed,
            f"tower_{which}",
            f"tower_{which}",
            "pretrain",
            settings,
            [],
            lambda **kw: train_tower(settings, which=which, **kw),
        )

    def simcse_long(self, seed: int) -> Stage:
        """Tower A trained train.steps more SimCSE steps (pretrain settings otherwise), from its stage-1 weights."""
        from jtcse.training.stages import train_tower

        base = self.settings_for(seed)
        settings = self.settings_for(seed, {"pretrain.steps": base.train.steps})
        tower_a = self.tower(seed, "a")
        return self._run(
            seed,
            "simcse_long",
            "tower_a",
            "pretrain",
            settings,
            [tower_a],
            lambda **kw: train_tower(settings, which="a", init=str(tower_a.path), **kw),
        )

    def twin(
        self, seed: int, cross_attention: bool = True, *, design: dict[str, Any] | None = None, name: str | None = None
    ) -> Stage:
        """Stage 2 from this seed's towers: the train settings, without the bridge (TNCSE), or with ``design``
        overrides (an ablation cell or a named design row, stored under ``name``)."""
        from jtcse.training.stages import train_twin

        extra = dict(design or {})
        if not cross_attention:
            extra["train.cross_attention.num_layers"] = 0
        settings = self.settings_for(seed, extra)
        a, b = self.tower(seed, "a"), self.tower(seed, "b")
        name = name or ("twin_jtcse" if cross_attention else "twin_tncse")
        return self._run(
            seed,
            name,
            "twin",
            "train",
            settings,
            [a, b],
            lambda **kw: train_twin(settings, tower_a=str(a.path), tower_b=str(b.path), **kw),
        )

    def ensemble(self, seed: int) -> Stage:
        """Towers A and B of this seed side by side: a stage that depends on both, with no training (and no
        time) of its own."""
        a, b = self.tower(seed, "a"), self.tower(seed, "b")
        return Stage("ensemble", b.path, 0.0, _digest([a.fingerprint, b.fingerprint]), False, [a, b], synthetic=True)

    def distilled(self, seed: int) -> Stage:
        from jtcse.training.stages import distill_twin

        settings = self.settings_for(seed)
        twin = self.twin(seed, cross_attention=True)
        return self._run(
            seed,
            "distilled",
            "distill",
            "distill",
            settings,
            [twin],
            lambda **kw: distill_twin(settings, twin=str(twin.path), **kw),
        )


def _weights_digest(path: str | Path) -> str:
    """SHA256 of a tower's weights as the model holds them (sorted names, raw bytes): equal for a checkpoint and a
    copy saved from it, whatever the file's metadata or tensor order."""
    from jtcse.modeling.towers import load_tower

    model, _ = load_tower(str(path))
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def encoder_identity(towers: list[tuple[str | Path, str]], combine: str = "sum", normalize: bool = False) -> str:
    """What an encoder's test scores depend on: its towers' weights and poolings and how they combine. A
    normalised sum of two identical towers points where the tower alone points (cosine ignores the factor 2), so
    it has the tower's identity."""
    parts = [(_weights_digest(path), pooling) for path, pooling in towers]
    if len(parts) == 2 and parts[0] == parts[1] and normalize and combine == "sum":
        parts = parts[:1]
    return _digest({"towers": parts, "combine": combine if len(parts) == 2 else None, "normalize": normalize})


def saved_towers(path: str | Path, pooling: str) -> tuple[list[tuple[Path, str]], str, bool]:
    """The (weights folder, pooling) of each tower a saved model runs, and how they combine (for
    :func:`encoder_identity`): a twin's towers as its manifest says, else the one tower at ``path`` with
    ``pooling``."""
    from jtcse.formats import TWIN_MANIFEST, twin_poolings

    manifest_path = Path(path) / TWIN_MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        pools = twin_poolings(manifest)
        towers = [(Path(path) / name, pool) for name, pool in zip(manifest["towers"], pools)]
        return towers, manifest["combine"], bool(manifest.get("normalize", False))
    return [(Path(path), pooling)], "sum", False
