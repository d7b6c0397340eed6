"""Safe loading: no unpickling, no remote code unless asked, and no way around a package's checksums."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.release.test_packaging import build, inputs  # noqa: F401  (inputs is a fixture)


@pytest.fixture(scope="module")
def pkg(inputs):  # noqa: F811
    return build(inputs, inputs["root"] / "safe_loading").path


@pytest.fixture()
def pkg_copy(pkg, tmp_path):
    return Path(shutil.copytree(pkg, tmp_path / pkg.name))


def test_a_pickle_only_model_folder_is_refused_without_unpickling(tiny_bert, tmp_path, capsys):
    from jtcse.cli import main
    from jtcse.errors import UserError
    from jtcse.modeling.towers import load_tower

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_bert, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling this file would create the marker
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"weights": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(UserError, match=r"has only pickle weights \(pytorch_model\.bin\), which jtcse never unpickles"):
        load_tower(str(folder))
    assert main(["similarity", "a", "b", "--model", str(folder), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        f"jtcse: error: model '{folder}': {folder} has only pickle weights"
    ) and "Traceback" not in "".join(err)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "garbled_header", "truncated"])
def test_a_corrupt_safetensors_file_is_one_line_naming_it_and_nothing_is_unpickled(
    damage, tiny_bert, small_sts_dir, tmp_path, capsys
):
    """Issue 21 item 9: a 0-byte (or damaged) model.safetensors beside a pytorch_model.bin was a SafetensorError
    traceback, exit 1, in encode, evaluate and jtcse.load; the pickle beside it must never be the fallback."""
    import jtcse
    from jtcse.cli import main
    from jtcse.errors import UserError

    folder = Path(shutil.copytree(tiny_bert, tmp_path / "damaged"))
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        {"empty": b"", "garbled_header": bytes(b ^ 0x5A for b in data[:64]) + data[64:], "truncated": data[:-100]}[
            damage
        ]
    )
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling this file would create the marker
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"evil": Payload()}, folder / "pytorch_model.bin")
    expected = f"{weights}: not a readable safetensors file ("
    with pytest.raises(UserError) as caught:
        jtcse.load(str(folder))
    assert str(caught.value).startswith(expected), caught.value
    sentences = tmp_path / "in.txt"
    sentences.write_text("a sentence\nanother one\n")
    runs = [
        ["encode", "--model", folder, "--input", sentences, "--output", tmp_path / "v.npy"],
        ["evaluate", "--model", folder, "--data-dir", small_sts_dir, "--output", tmp_path / "m.json"],
    ]
    for args in runs:
        capsys.readouterr()
        assert main([str(a) for a in args]) == 2, args[0]
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("jtcse")]
        assert len(lines) == 1 and lines[0].startswith(f"jtcse: error: {expected}") and "Traceback" not in err, err
    assert not marker.exists() and not (tmp_path / "v.npy").exists() and not (tmp_path / "m.json").exists()


def test_trainer_state_is_loaded_with_weights_only(tmp_path):
    """The one torch.load of the project (a checkpoint's trainer state) refuses objects beyond tensors."""
    from jtcse.training.checkpoints import read_checkpoint_files, record_checkpoint_digests

    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    checkpoint = tmp_path / "step-00000001"
    checkpoint.mkdir()
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(checkpoint / "model.safetensors"))
    torch.save({"step": 1, "evil": Payload()}, checkpoint / "trainer_state.pt")
    record_checkpoint_digests(checkpoint)  # digests that match: the refusal below is torch.load's
    with pytest.raises(Exception, match="Weights only load failed"):
        read_checkpoint_files(checkpoint)
    assert not marker.exists()


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_remote_code_is_refused_unless_trust_remote_code(config_file, tiny_bert, tmp_path):
    from jtcse.errors import UserError
    from jtcse.modeling.towers import load_tower

    folder = Path(shutil.copytree(tiny_bert, tmp_path / "remote"))
    config = json.loads((folder / config_file).read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel", "AutoConfig": "configuration_evil.EvilConfig"}
    (folder / config_file).write_text(json.dumps(config))
    with pytest.raises(
        UserError,
        match=rf"{config_file}: auto_map \['AutoConfig', 'AutoModel'\] asks to run Python "
        r"code shipped with the model; refused because model.trust_remote_code is false",
    ):
        load_tower(str(folder))
    from jtcse.modeling.towers import check_safe_to_load

    check_safe_to_load(folder, trust_remote_code=True)  # the explicit opt-in passes this gate


def test_a_package_without_sha256sums_is_refused(pkg_copy, capsys):
    import jtcse
    from jtcse.api import IntegrityError
    from jtcse.cli import main

    (pkg_copy / "SHA256SUMS").unlink()
    for target in (pkg_copy, pkg_copy / "distilled", pkg_copy / "twin", pkg_copy / "twin" / "tower_a"):
        with pytest.raises(
            IntegrityError,
            match=rf"{pkg_copy}: a package \(jtcse_package.json\) without SHA256SUMS; "
            "refusing to load weights that cannot be verified",
        ):
            jtcse.load(target, device="cpu")
    assert main(["similarity", "a", "b", "--model", str(pkg_copy), "--device", "cpu"]) == 2
    assert "without SHA256SUMS" in capsys.readouterr().err


def test_a_tower_inside_a_package_is_verified_against_the_package(pkg_copy):
    import jtcse
    from jtcse.api import IntegrityError

    weights = pkg_copy / "twin" / "tower_a" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"twin/tower_a/model\.safetensors: SHA256 does not match"):
        jtcse.load(pkg_copy / "twin" / "tower_a", device="cpu")


def test_a_file_edited_together_with_sha256sums_is_caught_by_the_manifest(pkg_copy):
    import jtcse
    from jtcse.api import IntegrityError, sha256_file

    config = pkg_copy / "distilled" / "config.json"
    config.write_text(config.read_text().replace('"hidden_act": "gelu"', '"hidden_act": "relu"'))
    sums = pkg_copy / "SHA256SUMS"
    lines = [
        f"{sha256_file(config)}  distilled/config.json" if line.endswith("  distilled/config.json") else line
        for line in sums.read_text().splitlines()
    ]
    sums.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        IntegrityError,
        match=r"distilled/config\.json: SHA256 does not match the digest in "
        r"jtcse_package\.json \(SHA256SUMS was edited too\)",
    ):
        jtcse.load(pkg_copy, device="cpu")


def test_a_package_manifest_stripped_of_its_digests_is_refused(pkg_copy):
    import jtcse
    from jtcse.api import IntegrityError, sha256_file

    manifest = pkg_copy / "jtcse_package.json"
    data = json.loads(manifest.read_text())
    del data["files"]
    manifest.write_text(json.dumps(data))
    sums = pkg_copy / "SHA256SUMS"
    sums.write_text(
        "".join(
            f"{sha256_file(manifest)}  jtcse_package.json\n" if line.endswith("  jtcse_package.json") else line + "\n"
            for line in sums.read_text().splitlines()
        )
    )
    with pytest.raises(IntegrityError, match=r'the file digests \("files"\) are missing'):
        jtcse.load(pkg_copy, device="cpu")
