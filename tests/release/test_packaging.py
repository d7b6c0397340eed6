"""`jtcse package`: a checksummed release folder whose distilled model is a plain sentence-transformers model."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import build_tiny_model

SENTENCES = [
    "A man is playing a guitar.",
    "Two dogs run across a snowy field while a child watches them.",
    "x",
    "The stock market fell sharply on Tuesday, analysts said.",
]
TASKS = ("sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine run far faster on one thread; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_bert, data_dir):
    """What the pipeline hands `jtcse package`: a twin, a distilled tower, metrics, summaries, data.dvc."""
    from jtcse.config import settings_from_dict
    from jtcse.modeling.towers import load_tower
    from jtcse.training.objectives import save_twin

    root = tmp_path_factory.mktemp("package_inputs")
    tower_a, tok = load_tower(str(tiny_bert))
    tower_b, _ = load_tower(str(build_tiny_model(root / "tiny_b", seed=1)))
    save_twin(tower_a, tower_b, tok, root / "models" / "twin", poolings=("cls", "cls"), combine="sum")
    build_tiny_model(root / "models" / "distilled", seed=2)
    for name, base in (("twin", 70.0), ("distilled", 71.0), ("base", 65.0), ("base_mean", 72.0)):
        scores = {t: base + i for i, t in enumerate(TASKS)}
        scores["avg"] = float(np.mean(list(scores.values())))
        (root / "metrics" / name).mkdir(parents=True)
        (root / "metrics" / name / "metrics.json").write_text(json.dumps(scores))
    for stage, seconds in (("pretrain_a", 60.0), ("pretrain_b", 61.0), ("train", 120.5), ("distill", 90.0)):
        (root / "metrics" / stage).mkdir(parents=True)
        (root / "metrics" / stage / "summary.json").write_text(json.dumps({"seconds_this_run": seconds}))
    (root / "data.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  nfiles: 50\n  path: data\n")
    settings = settings_from_dict(
        {
            "model": {"base": str(tiny_bert), "pooling": "cls"},
            "evaluate": {"max_length": 32},
            "package": {"name": "tiny-jtcse", "version": "0.0.1"},
        }
    )
    return {
        "root": root,
        "settings": settings,
        "twin": root / "models" / "twin",
        "distilled": root / "models" / "distilled",
        "licenses": data_dir / "licenses",
        "twin_metrics": root / "metrics" / "twin" / "metrics.json",
        "distilled_metrics": root / "metrics" / "distilled" / "metrics.json",
        "data_dvc": root / "data.dvc",
        "base_metrics": root / "metrics" / "base" / "metrics.json",
        "base_mean_metrics": root / "metrics" / "base_mean" / "metrics.json",
    }


def build(inputs, output_dir, check=False):
    from jtcse.release.packaging import build_package

    return build_package(
        inputs["settings"],
        twin=inputs["twin"],
        distilled=inputs["distilled"],
        twin_metrics=inputs["twin_metrics"],
        distilled_metrics=inputs["distilled_metrics"],
        output_dir=output_dir,
        data_dvc=inputs["data_dvc"],
        licenses=inputs["licenses"],
        check=check,
        base_metrics=inputs["base_metrics"],
        base_mean_metrics=inputs["base_mean_metrics"],
    )


@pytest.fixture(scope="module")
def package(inputs):
    """Built once, with the self-check (loads every packaged model back, sentence-transformers included)."""
    return build(inputs, inputs["root"] / "models", check=True)


def manual_cls(model_dir: Path, sentences: list[str], max_length: int = 32) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    batch = tok(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).last_hidden_state[:, 0].numpy()


def all_files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def test_package_layout_manifest_and_model_card(package, inputs):
    pkg = package.path
    assert pkg == inputs["root"] / "models" / "tiny-jtcse-0.0.1"
    assert package.tarball == inputs["root"] / "models" / "tiny-jtcse-0.0.1.tar.gz"
    assert oct(pkg.stat().st_mode & 0o777) == oct(0o755) and oct(package.tarball.stat().st_mode & 0o777) == oct(0o644)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
        "README.md",
    ):
        assert (pkg / "distilled" / name).is_file(), name
    assert (pkg / "twin" / "twin.json").is_file() and (pkg / "twin" / "tower_b" / "model.safetensors").is_file()
    assert (pkg / "licenses" / "SICK_readme.txt").is_file()
    modules = json.loads((pkg / "distilled" / "modules.json").read_text())
    assert [(m["type"], m["path"]) for m in modules] == [
        ("sentence_transformers.models.Transformer", ""),
        ("sentence_transformers.models.Pooling", "1_Pooling"),
    ]
    pooling = json.loads((pkg / "distilled" / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 32 and pooling["pooling_mode_cls_token"] is True
    assert not any(v for k, v in pooling.items() if k.startswith("pooling_mode_") and k != "pooling_mode_cls_token")
    assert json.loads((pkg / "distilled" / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": 32,
        "do_lower_case": False,
    }

    manifest = json.loads((pkg / "jtcse_package.json").read_text())
    assert (manifest["name"], manifest["version"], manifest["default"]) == ("tiny-jtcse", "0.0.1", "distilled")
    assert manifest["models"]["distilled"]["metrics"]["sts12"] == 71.0
    assert manifest["models"]["twin"]["combine"] == "sum" and manifest["models"]["twin"]["dimension"] == 32
    assert manifest["data_version"] == "0123456789abcdef0123456789abcdef.dir"
    assert manifest["training_seconds"] == pytest.approx(331.5)

    card = (pkg / "README.md").read_text()
    assert "| JTCSE twin (sum of both towers) | 70.00 | 71.00 |" in card
    assert "| JTCSE-D (distilled, this model) | 71.00 | 72.00 |" in card
    assert "0123456789abcdef0123456789abcdef.dir" in card and "5 min 32 s" in card  # 331.5 s in total
    assert manifest["git_commit"] in card and ("CPU:" in card or " x " in card)
    assert "CC BY-NC-SA 3.0" in card and "non-commercial" in card and "Intended use" in card
    corpus = Path(inputs["settings"].data.corpus)  # the card counts the corpus it names, and quotes the bundle
    assert f"`{corpus}` ({sum(1 for line in corpus.open('rb') if line.strip()):,} sentences)" in card
    assert "\n* **SICK** (`licenses/SICK_readme.txt`): CC BY-NC-SA 3.0 Unported" in card
    assert "```yaml\nmodel:\n" in card and "  pooling: cls" in card and "package:\n  name: tiny-jtcse" in card
    assert (pkg / "distilled" / "README.md").read_text() == card
    # the comparison with the untrained base, both poolings
    base = Path(inputs["settings"].model.base).name
    assert f"| base {base}, cls pooling (zero-shot) | 65.00 | 66.00 |" in card
    assert f"| base {base}, mean pooling (zero-shot) | 72.00 | 73.00 |" in card
    assert f"JTCSE-D averages 74.00, 6.00 points above the base {base}, cls pooling (68.00)." in card
    assert f"JTCSE-D averages 74.00, 1.00 points below the base {base}, mean pooling (75.00)." in card
    # model-index in the YAML front matter (the Hugging Face format), parsed like the hub does
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "sentence-transformers" and front["license_name"] == "research-non-commercial"
    (entry,) = front["model-index"]
    assert entry["name"] == "tiny-jtcse-0.0.1"
    results = {r["dataset"]["type"]: r for r in entry["results"]}
    assert len(results) == 7 and results["mteb/sts12-sts"]["metrics"] == [
        {"type": "spearman_cosine", "value": 71.0, "name": "Spearman (cosine) x 100"}
    ]
    assert results["mteb/sickr-sts"]["metrics"][0]["value"] == 77.0
    assert all(r["task"]["type"] == "semantic-similarity" and r["dataset"]["split"] == "test" for r in entry["results"])


def test_checksums_cover_every_file_and_pass_sha256sum(package):
    from jtcse.api import verify_checksums

    pkg = package.path
    lines = (pkg / "SHA256SUMS").read_text().splitlines()
    names = [line.split("  ", 1)[1] for line in lines]
    assert names == sorted(names) == [f for f in all_files(pkg) if f != "SHA256SUMS"]
    verify_checksums(pkg)
    if shutil.which("sha256sum"):
        proc = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=pkg, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sentence_transformers_loads_the_export_and_matches_jtcse_and_automodel(package, caplog):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    import jtcse

    export = package.path / "distilled"
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        st = SentenceTransformer(str(export), device="cpu")  # no trust_remote_code
    noisy = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    noisy += [r.getMessage() for r in caplog.records if r.name.startswith(("sentence_transformers", "transformers"))]
    assert not noisy, noisy
    assert type(st[0]).__name__ == "Transformer" and type(st[1]).__name__ == "Pooling"
    assert st.max_seq_length == 32
    via_st = st.encode(SENTENCES, convert_to_numpy=True, show_progress_bar=False)
    via_jtcse = jtcse.load(package.path, device="cpu").encode(SENTENCES, batch_size=2, show_progress=True)
    manual = manual_cls(export, SENTENCES)
    assert via_st.shape == via_jtcse.shape == (len(SENTENCES), 32)
    assert np.abs(via_st - via_jtcse).max() < 1e-5
    assert np.abs(via_jtcse - manual).max() < 1e-5
    normalized = jtcse.load(package.path, device="cpu").encode(SENTENCES, normalize=True)
    assert np.allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)
    model, info = AutoModel.from_pretrained(str(export), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(model).__name__ == "BertModel"


def test_mean_pooling_export_matches_sentence_transformers_and_jtcse(inputs, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    import jtcse
    from jtcse.release.export import export_sentence_transformer

    entry = export_sentence_transformer(inputs["distilled"], tmp_path / "mean", pooling="mean", max_seq_length=32)
    assert (entry["pooling"], entry["dimension"], entry["max_seq_length"]) == ("mean", 32, 32)
    config = json.loads((tmp_path / "mean" / "1_Pooling" / "config.json").read_text())
    assert config["pooling_mode_mean_tokens"] is True and config["pooling_mode_cls_token"] is False
    via_st = SentenceTransformer(str(tmp_path / "mean"), device="cpu").encode(SENTENCES, show_progress_bar=False)
    encoder = jtcse.load(tmp_path / "mean", device="cpu")
    assert encoder.pooling == "mean" and encoder.max_length == 32
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "mean"))
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(str(tmp_path / "mean")).eval()(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    manual = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    assert np.abs(via_st - encoder.encode(SENTENCES)).max() < 1e-5 and np.abs(via_st - manual).max() < 1e-5


def test_twin_in_package_is_sum_of_both_towers_cls(package):
    import jtcse
    from jtcse.encoding import TwinEncoder

    twin = jtcse.load(package.path / "twin", device="cpu")
    assert isinstance(twin, TwinEncoder)
    expected = manual_cls(package.path / "twin" / "tower_a", SENTENCES) + manual_cls(
        package.path / "twin" / "tower_b", SENTENCES
    )
    assert np.abs(twin.encode(SENTENCES) - expected).max() < 1e-5


def test_a_package_with_any_byte_changed_is_refused(package, tmp_path):
    import jtcse
    from jtcse.api import IntegrityError, verify_checksums

    pkg = Path(shutil.copytree(package.path, tmp_path / "pkg"))
    for name in all_files(pkg):
        path = pkg / name
        original = path.read_bytes()
        changed = bytearray(original)
        changed[len(changed) // 2] ^= 0x01
        path.write_bytes(bytes(changed))
        with pytest.raises(IntegrityError, match=name.replace(".", r"\.") if name != "SHA256SUMS" else "SHA256SUMS"):
            verify_checksums(pkg)
        path.write_bytes(original)
    verify_checksums(pkg)

    weights = pkg / "distilled" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    for target in (pkg, pkg / "distilled", pkg / "twin"):  # a model folder inside the package is checked too
        with pytest.raises(IntegrityError, match=r"distilled/model\.safetensors: SHA256 does not match"):
            jtcse.load(target, device="cpu")
    weights.write_bytes(original)
    (pkg / "twin" / "extra.txt").write_text("not in the package")
    with pytest.raises(IntegrityError, match=r"twin/extra\.txt: file is not listed"):
        jtcse.load(pkg, device="cpu")
    (pkg / "twin" / "extra.txt").unlink()
    (pkg / "twin" / "twin.json").unlink()
    with pytest.raises(IntegrityError, match=r"twin/twin\.json: listed in .* but missing"):
        jtcse.load(pkg, device="cpu")


@pytest.mark.parametrize("where", ["copy_twin", "write_checksums", "tarball"])
def test_an_interrupted_package_leaves_the_previous_one_or_nothing(inputs, tmp_path, monkeypatch, where):
    import jtcse.release.packaging as packaging

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt(f"interrupted in {where}")

    def patch():
        if where == "tarball":  # part of the tarball is already written when it fails
            real_addfile, calls = tarfile.TarFile.addfile, []

            def addfile(self, *args, **kwargs):
                calls.append(1)
                if len(calls) > 5:
                    interrupt()
                return real_addfile(self, *args, **kwargs)

            monkeypatch.setattr(tarfile.TarFile, "addfile", addfile)
        else:
            monkeypatch.setattr(packaging, where, interrupt)

    fresh = tmp_path / "fresh"
    patch()
    with pytest.raises(KeyboardInterrupt):
        build(inputs, fresh)
    assert list(fresh.iterdir()) == []  # no package, no tarball, no temporary folder or file
    monkeypatch.undo()

    out = tmp_path / "models"
    old = build(inputs, out)
    before = {name: (old.path / name).read_bytes() for name in all_files(old.path)}
    old_tarball = old.tarball.read_bytes()
    patch()
    with pytest.raises(KeyboardInterrupt):
        build(inputs, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "tiny-jtcse-0.0.1",
        "tiny-jtcse-0.0.1.release.json",
        "tiny-jtcse-0.0.1.tar.gz",
    ]
    assert {name: (old.path / name).read_bytes() for name in all_files(old.path)} == before
    assert old.tarball.read_bytes() == old_tarball


def test_tarball_holds_the_package_and_verifies_after_extraction(package, tmp_path):
    with tarfile.open(package.tarball) as tar:
        members = tar.getmembers()
        files = sorted(m.name for m in members if m.isfile())
        assert files == [f"tiny-jtcse-0.0.1/{f}" for f in all_files(package.path)]
        assert all(m.mtime == 0 and m.uid == 0 and m.mode in (0o644, 0o755) for m in members)
        tar.extractall(tmp_path, filter="data")
    from jtcse.api import verify_checksums

    verify_checksums(tmp_path / "tiny-jtcse-0.0.1")
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=tmp_path / "tiny-jtcse-0.0.1", check=True)


def test_cli_package_encode_and_similarity(inputs, tmp_path, capsys):
    import jtcse
    from jtcse.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(
        "model:\n  pooling: cls\nevaluate:\n  max_length: 32\npackage:\n  name: cli-pkg\n  version: 1.2.3\n"
    )
    code = main(
        [
            "package",
            "--params",
            str(params),
            "--twin",
            str(inputs["twin"]),
            "--distilled",
            str(inputs["distilled"]),
            "--twin-metrics",
            str(inputs["twin_metrics"]),
            "--distilled-metrics",
            str(inputs["distilled_metrics"]),
            "--output-dir",
            str(tmp_path / "models"),
            "--data-dvc",
            str(inputs["data_dvc"]),
            "--licenses",
            str(inputs["licenses"]),
            "--no-check",
        ]
    )
    assert code == 0
    pkg = tmp_path / "models" / "cli-pkg-1.2.3"
    assert (pkg / "SHA256SUMS").is_file() and (tmp_path / "models" / "cli-pkg-1.2.3.tar.gz").is_file()
    assert "package -> " in capsys.readouterr().out

    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    out = tmp_path / "vectors" / "v.npy"
    out.parent.mkdir()  # encode refuses an output folder that does not exist (a typo would create one)
    assert (
        main(
            [
                "encode",
                "--model",
                str(pkg),
                "--input",
                str(text),
                "--output",
                str(out),
                "--device",
                "cpu",
                "--batch-size",
                "3",
            ]
        )
        == 0
    )
    vectors = np.load(out)
    assert vectors.shape == (len(SENTENCES), 32) and vectors.dtype == np.float32
    assert np.abs(vectors - jtcse.load(pkg, device="cpu").encode(SENTENCES)).max() < 1e-5
    assert list(out.parent.iterdir()) == [out]

    capsys.readouterr()
    for model in (pkg, pkg / "twin"):
        assert (
            main(
                [
                    "similarity",
                    "A man plays a guitar.",
                    "Someone is playing music.",
                    "--model",
                    str(model),
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        value = float(capsys.readouterr().out.strip())
        assert -1.0 <= value <= 1.0

    (pkg / "distilled" / "config.json").write_text("{}")
    assert main(["similarity", "a", "b", "--model", str(pkg), "--device", "cpu"]) == 2
    assert "distilled/config.json: SHA256 does not match" in capsys.readouterr().err


def test_package_refuses_missing_or_bad_inputs(inputs, tmp_path):
    from jtcse.release.packaging import build_package

    common = dict(
        twin=inputs["twin"],
        distilled=inputs["distilled"],
        distilled_metrics=inputs["distilled_metrics"],
        output_dir=tmp_path / "models",
        data_dvc=inputs["data_dvc"],
        licenses=None,
        check=False,
    )
    with pytest.raises(FileNotFoundError, match="metrics file not found"):
        build_package(inputs["settings"], twin_metrics=tmp_path / "nope.json", **common)
    bad = tmp_path / "bad.json"
    bad.write_text('{"sts12": "high"}')
    with pytest.raises(ValueError, match="task -> Spearman"):
        build_package(inputs["settings"], twin_metrics=bad, **common)
    with pytest.raises(FileNotFoundError, match="not a twin folder"):
        build_package(
            inputs["settings"], twin_metrics=inputs["twin_metrics"], **{**common, "twin": inputs["distilled"]}
        )
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []


def test_a_second_package_into_the_same_output_is_refused_and_keeps_the_first_runs_temporary_folder(
    inputs, tmp_path, capsys
):
    """Issue 21 item 2: while one `jtcse package` holds the package's lock (here: this test, in its place), a
    second run into the same output is one line, exit 2, and leaves the first run's live temporary folder alone."""
    from jtcse.cli import main
    from jtcse.release.packaging import PackageLock

    out = tmp_path / "models"
    params = tmp_path / "params.yaml"
    params.write_text("model:\n  pooling: cls\nevaluate:\n  max_length: 32\npackage:\n  name: pkg\n  version: 1.0.0\n")
    args = ["package", "--params", str(params), "--twin", str(inputs["twin"]), "--distilled", str(inputs["distilled"])]
    args += ["--twin-metrics", str(inputs["twin_metrics"]), "--distilled-metrics", str(inputs["distilled_metrics"])]
    args += ["--output-dir", str(out), "--data-dvc", str(inputs["data_dvc"]), "--licenses", "", "--no-check"]
    first = PackageLock(out / "pkg-1.0.0")
    first.acquire()
    try:
        live = out / ".pkg-1.0.0.abcd1234.tmp"  # the first run's folder being built
        live.mkdir()
        (live / "README.md").write_text("being written")
        assert main(args) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("jtcse")]
        assert len(err) == 1 and err[0].startswith(
            f"jtcse: error: {out / 'pkg-1.0.0'}: another `jtcse package` is writing this package (pid "
        ), err
        assert err[0].endswith("; wait for it to end, or give this run its own --output-dir")
        assert (live / "README.md").read_text() == "being written"
        assert sorted(p.name for p in out.iterdir()) == [".pkg-1.0.0.abcd1234.tmp", ".pkg-1.0.0.lock"]
    finally:
        first.release()
    assert main(args) == 0  # the lock released: the next run removes the leftover and builds
    assert sorted(p.name for p in out.iterdir()) == ["pkg-1.0.0", "pkg-1.0.0.release.json", "pkg-1.0.0.tar.gz"]


def test_a_package_lock_removed_by_its_holder_is_not_shared(tmp_path, monkeypatch):
    """The lock file is unlinked on release. A run that opened the old file just before (B) and locks it just
    after, while a third run (C) already holds the new file, sees that its file is gone and is refused."""
    import fcntl

    import jtcse.io as io
    from jtcse.errors import UserError
    from jtcse.release.packaging import PackageLock

    target = tmp_path / "pkg-1"
    a, b, c = PackageLock(target), PackageLock(target), PackageLock(target)
    a.acquire()
    with pytest.raises(UserError, match="another `jtcse package` is writing this package"):
        PackageLock(target).acquire()
    real_flock, raced = fcntl.flock, []

    def flock(fd, op):  # B opened the old lock file; before it locks it, A releases and C takes the new one
        if not raced and op & fcntl.LOCK_NB:
            raced.append(fd)
            monkeypatch.setattr(io.fcntl, "flock", real_flock)
            a.release()
            c.acquire()
        return real_flock(fd, op)

    monkeypatch.setattr(io.fcntl, "flock", flock)
    with pytest.raises(UserError, match="another `jtcse package` is writing this package"):
        b.acquire()
    assert raced
    c.release()
    assert not (tmp_path / ".pkg-1.lock").exists()
    b.acquire()
    b.release()
