"""jtcse.formats: the file names, digests and base-model names every part of jtcse shares, in one place."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest


def _modules_after_import(*modules: str) -> set[str]:
    code = f"import sys\nimport {', '.join(modules)}\nprint(__import__('json').dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(out.stdout))


def test_formats_needs_only_the_standard_library():
    loaded = _modules_after_import("jtcse.formats")
    assert not {"torch", "transformers", "pydantic", "yaml", "numpy", "jtcse.config"} & loaded


def test_loading_and_modeling_import_neither_settings_nor_training_code():
    loaded = _modules_after_import("jtcse.api", "jtcse.encoding", "jtcse.modeling.towers", "jtcse.modeling.twin")
    assert "jtcse.config" not in loaded and "pydantic" not in loaded
    assert not [m for m in loaded if m.startswith("jtcse.training")]


def test_every_user_shares_the_one_definition():
    from jtcse import api, formats
    from jtcse.release import integrity, packaging, registry
    from jtcse.training import objectives, stages

    assert api.PACKAGE_MANIFEST is packaging.PACKAGE_MANIFEST is formats.PACKAGE_MANIFEST == "jtcse_package.json"
    assert api.CHECKSUMS is integrity.CHECKSUMS is formats.CHECKSUMS == "SHA256SUMS"
    assert api.TWIN_MANIFEST is objectives.TWIN_MANIFEST is formats.TWIN_MANIFEST == "twin.json"
    assert api.sha256_file is registry.sha256_file is stages.sha256_file is formats.sha256_file
    assert not hasattr(packaging, "BASE_NAMES")


def test_sha256_file_matches_hashlib_across_chunk_boundaries(tmp_path):
    from jtcse.formats import sha256_file

    data = bytes(range(256)) * ((1 << 20) // 256 * 2 + 3)  # two 1 MiB chunks and a tail
    (tmp_path / "blob").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(tmp_path / "empty")) == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("name", ["minilm", "all-MiniLM-L6-v2"])
def test_symbolic_base_models_resolve_to_a_local_folder_and_a_hub_id(name):
    from pathlib import Path

    from jtcse.formats import hub_model_id, resolve_model_path

    assert (Path(resolve_model_path(name)) / "config.json").is_file()
    assert hub_model_id(name) == "sentence-transformers/all-MiniLM-L6-v2"


def test_other_model_names_pass_through_unchanged(tmp_path):
    from jtcse.formats import hub_model_id, resolve_model_path

    for name in ("bert-base-uncased", "owner/model", str(tmp_path)):
        assert resolve_model_path(name) == name and hub_model_id(name) == name
