"""checkpoint_import, checkpoint_verify and checkpoint_demo, as an operator runs them."""

from __future__ import annotations

import json
import shutil
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit import events
from audit.models import AuditEvent
from models_registry.models import Checkpoint
from models_registry.weights import DEMO_SHAPES

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.fixture
def folder(demo_folders, tmp_path) -> Path:
    """A private copy of the gpt2 demo folder for a test to damage."""
    return Path(shutil.copytree(demo_folders["gpt2"][0], tmp_path / "gpt2"))


def flip_last_byte(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 0x01]))


def test_importing_a_demo_folder_registers_it_as_demo_with_its_hash(checkpoints, demo_folders):
    path, info = demo_folders["gpt2"]
    output = run("checkpoint_import", "gpt2", str(path))
    gpt2 = Checkpoint.objects.get(slug="gpt2")
    assert gpt2.is_demo
    assert gpt2.weights_sha256 == info.sha256
    assert gpt2.weights_parameter_count == info.parameter_count
    assert gpt2.weights_path == str(path.resolve())
    assert gpt2.context_length == 1024
    assert f"Registered demo weights for gpt2: {info.parameter_count:,} parameters" in output
    event = AuditEvent.objects.get(action=events.CHECKPOINT_WEIGHTS_REGISTERED)
    assert event.data["sha256"] == info.sha256 and event.data["is_demo"] is True


def test_a_folder_of_the_released_shape_is_registered_as_real(demo_folders):
    # A stage whose released shape is the demo's: the cheap stand-in for 500 MB of real gpt2 weights.
    path, info = demo_folders["gpt2"]
    shape = DEMO_SHAPES["gpt2"]
    Checkpoint.objects.create(
        slug="gpt2-tiny",
        display_name="GPT-2 Tiny",
        size_label="0.3M",
        parameter_count=info.parameter_count,
        n_layer=shape.n_layer,
        n_embd=shape.n_embd,
        n_head=shape.n_head,
        vocab_size=info.vocab_size,
        released_on="2019-01-01",
    )
    assert "Registered real weights for gpt2-tiny" in run("checkpoint_import", "gpt2-tiny", str(path))
    assert not Checkpoint.objects.get(slug="gpt2-tiny").is_demo


def test_pickled_bin_weights_are_refused(checkpoints, folder):
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CommandError, match="Pickled weights are refused"):
        run("checkpoint_import", "gpt2", str(folder))
    assert not Checkpoint.objects.get(slug="gpt2").has_weights


def test_a_config_that_is_not_gpt2_is_refused(checkpoints, folder):
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CommandError, match=r'gpt2: config\.json has model_type "llama"'):
        run("checkpoint_import", "gpt2", str(folder))
    assert not Checkpoint.objects.get(slug="gpt2").has_weights


def test_a_corrupt_safetensors_file_is_refused(checkpoints, folder):
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CommandError, match=r"model\.safetensors is corrupt or unreadable"):
        run("checkpoint_import", "gpt2", str(folder))
    assert not Checkpoint.objects.get(slug="gpt2").has_weights


def test_a_shape_mismatch_is_refused_unless_allowed(checkpoints, demo_folders):
    medium = demo_folders["gpt2-medium"][0]
    with pytest.raises(CommandError, match="Wrong shape for gpt2: the folder has n_layer=3 where gpt2 has 12") as exc:
        run("checkpoint_import", "gpt2", str(medium))
    assert "--allow-shape-mismatch" in str(exc.value)
    assert not Checkpoint.objects.get(slug="gpt2").has_weights

    output = run("checkpoint_import", "gpt2", str(medium), "--allow-shape-mismatch")
    assert "shape mismatch allowed" in output
    gpt2 = Checkpoint.objects.get(slug="gpt2")
    assert gpt2.weights_sha256 == demo_folders["gpt2-medium"][1].sha256
    assert not gpt2.is_demo
    event = AuditEvent.objects.get(action=events.CHECKPOINT_WEIGHTS_REGISTERED)
    assert event.data["shape_mismatch_allowed"] is True


def test_an_unknown_slug_lists_the_known_ones(checkpoints, folder):
    with pytest.raises(CommandError, match="No checkpoint 'gpt3'; the registry has: gpt2, gpt2-medium"):
        run("checkpoint_import", "gpt3", str(folder))


def test_verify_passes_untouched_weights_and_catches_one_changed_byte(checkpoints, folder):
    run("checkpoint_import", "gpt2", str(folder))
    output = run("checkpoint_verify")
    assert "gpt2: ok" in output
    assert "gpt2-xl: no weights registered" in output

    flip_last_byte(folder / "model.safetensors")
    with pytest.raises(CommandError, match=r"Weights changed since registration: gpt2\.") as exc:
        run("checkpoint_verify")
    assert exc.value.returncode == 1
    with pytest.raises(CommandError, match="gpt2"):
        run("checkpoint_verify", "gpt2")


def test_verify_reports_missing_weights_as_drift(checkpoints, folder):
    run("checkpoint_import", "gpt2", str(folder))
    shutil.rmtree(folder)
    with pytest.raises(CommandError, match="gpt2"):
        run("checkpoint_verify", "gpt2")


def test_verify_of_a_slug_without_weights_says_what_to_run(checkpoints):
    with pytest.raises(CommandError, match="gpt2-xl has no registered weights"):
        run("checkpoint_verify", "gpt2-xl")


def test_demo_builds_all_four_then_is_a_no_op(checkpoints, demo_folders, settings, tmp_path):
    settings.CHECKPOINTS_DIR = tmp_path / "checkpoints"
    first = run("checkpoint_demo")
    assert first.count("built") == 4
    registered = {c.slug: c for c in Checkpoint.objects.all()}
    for slug, (_, info) in demo_folders.items():
        assert registered[slug].is_demo
        assert registered[slug].weights_sha256 == info.sha256, "a rebuilt demo has the same bytes"
        assert registered[slug].weights_path == str(tmp_path / "checkpoints" / slug)
    weights = tmp_path / "checkpoints" / "gpt2" / "model.safetensors"
    built_at = weights.stat().st_mtime_ns

    second = run("checkpoint_demo")
    assert second.count("up to date") == 4
    assert weights.stat().st_mtime_ns == built_at
    assert AuditEvent.objects.filter(action=events.CHECKPOINT_WEIGHTS_REGISTERED).count() == 4


def test_demo_rebuilds_a_tampered_folder_and_leaves_real_weights_alone(checkpoints, demo_folders, settings, tmp_path):
    settings.CHECKPOINTS_DIR = tmp_path
    for slug, (path, _) in demo_folders.items():
        shutil.copytree(path, tmp_path / slug)
        run("checkpoint_import", slug, str(tmp_path / slug))
    flip_last_byte(tmp_path / "gpt2-medium" / "model.safetensors")
    # Not the xl demo's shape, so not a demo: it stands in for real weights.
    real = Path(shutil.copytree(demo_folders["gpt2-large"][0], tmp_path / "real-xl"))
    run("checkpoint_import", "gpt2-xl", str(real), "--allow-shape-mismatch")

    output = run("checkpoint_demo")
    assert "gpt2-medium  built" in output
    assert "gpt2-xl      real weights registered; left alone" in output
    assert Checkpoint.objects.get(slug="gpt2-xl").weights_path == str(real)
    run("checkpoint_verify")  # everything matches again
