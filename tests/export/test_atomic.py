"""Atomic replacement of an export: a kill at any point leaves the old or the new export."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.export import export_saved_model
from t2t_image.export.atomic import MARKER
from t2t_image.export.atomic import ExportDirError
from t2t_image.export.atomic import staging_dir
from t2t_image.export.atomic import write_folder_atomically
from t2t_image.models import ImageTransformer


def _files(folder):
    return {name: (folder / name).read_text() for name in sorted(os.listdir(folder))
            if name != MARKER}


def test_replace_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "export"

    def write(version):
        def fill(folder):
            for name in ("a.txt", "b.txt"):
                with open(os.path.join(folder, name), "w") as f:
                    f.write(f"{version} {name}")
        return fill

    write_folder_atomically(target, write("v1"))
    assert _files(target) == {"a.txt": "v1 a.txt", "b.txt": "v1 b.txt"}

    def fails(folder):
        write("v2")(folder)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_folder_atomically(target, fails)
    assert _files(target) == {"a.txt": "v1 a.txt", "b.txt": "v1 b.txt"}  # Untouched.
    assert not os.path.exists(staging_dir(target))
    # A staging folder left by a killed export is removed by the next one.
    os.makedirs(os.path.join(staging_dir(target), "junk"))
    write_folder_atomically(target, write("v3"))
    assert _files(target) == {"a.txt": "v3 a.txt", "b.txt": "v3 b.txt"}
    assert sorted(os.listdir(tmp_path)) == ["export"]
    # An empty folder (made by the user) is filled; a file is refused.
    (tmp_path / "empty").mkdir()
    write_folder_atomically(tmp_path / "empty", write("v4"))
    assert _files(tmp_path / "empty")["a.txt"] == "v4 a.txt"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportDirError, match="exists and is not a folder"):
        write_folder_atomically(tmp_path / "file", write("v5"))


def _fill(folder):
    with open(os.path.join(folder, "saved_model.pb"), "w") as f:
        f.write("new")


def _tree(folder):
    return {os.path.relpath(os.path.join(r, n), folder): open(os.path.join(r, n), "rb").read()
            for r, _, names in os.walk(folder) for n in names}


def test_only_an_export_this_project_wrote_is_replaced(tmp_path):
    """Issue 24: --overwrite replaced a folder of the user's files, and a run's checkpoints/."""
    # A folder of someone's files: refused, untouched, nothing written beside it.
    photos = tmp_path / "photos"
    (photos / "2024").mkdir(parents=True)
    (photos / "2024" / "a.jpg").write_bytes(b"\xff\xd8 holiday")
    before = _tree(photos)
    with pytest.raises(ExportDirError, match=f"{photos} is not an export written by t2t_image "
                       f"\\(no valid {MARKER}; it holds 2024/a.jpg\\)"):
        write_folder_atomically(photos, _fill)
    assert _tree(photos) == before and sorted(os.listdir(tmp_path)) == ["photos"]
    # A run's folders (here its checkpoints/, and the model_dir itself), marker or not.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "model_config.json").write_text("{}")
    (run / "checkpoints" / "ckpt-2.index").write_bytes(b"index")
    (run / "checkpoints" / MARKER).write_text('{"written_by": "t2t_image export", "files": '
                                              '["ckpt-2.index"]}')
    before = _tree(run)
    for target in (run / "checkpoints", run):
        with pytest.raises(ExportDirError, match="holds a training run"):
            write_folder_atomically(target, _fill)
    assert _tree(run) == before
    # An export it wrote: replaced; with a file added by someone: refused, naming it.
    export = tmp_path / "export"
    write_folder_atomically(export, _fill)
    assert sorted(os.listdir(export)) == ["saved_model.pb", MARKER]
    write_folder_atomically(export, _fill)
    (export / "notes.txt").write_text("mine")
    with pytest.raises(ExportDirError, match=r"holds files the export did not write \(notes.txt\)"):
        write_folder_atomically(export, _fill)
    assert (export / "notes.txt").read_text() == "mine"
    # A damaged marker counts as none.
    (export / "notes.txt").unlink()
    (export / MARKER).write_text("[1, 2]")
    with pytest.raises(ExportDirError, match="no valid"):
        write_folder_atomically(export, _fill)


CHILD = textwrap.dedent("""
    import sys
    import uuid
    # TensorFlow writes saved_model.pb as saved_model.pb.tmp<uuid4 hex>, then renames it:
    # a fixed uuid gives strace a path to stop at.
    uuid.uuid4 = lambda: uuid.UUID(int=0)
    import keras
    import numpy as np
    from t2t_image.export import export_saved_model
    from t2t_image.models import ImageTransformer

    keras.utils.set_random_seed(int(sys.argv[2]))
    model = ImageTransformer(image_height=2, image_width=2, hidden_size=8, filter_size=8,
                             num_heads=2, num_decoder_layers=1, block_length=4)
    model({"targets": np.zeros((1, 2, 2, 3), np.uint8)})
    export_saved_model(model, sys.argv[1], jit_compile=False)
""")


def _strace_problem():
    """Why the kill test cannot run here, or None."""
    if shutil.which("strace") is None:
        return "strace is not installed (apt-get install strace)"
    probe = subprocess.run(["strace", "-f", "-qq", "-e", "trace=none", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"strace cannot trace here (ptrace not permitted?): {probe.stderr.strip()[:200]}"
    return None


def _log_prob(export_dir, images):
    loaded = tf.saved_model.load(str(export_dir))  # Kept alive while its function runs.
    return loaded.log_prob(images=images)["log_prob"].numpy()


def _run_child(target, seed, *strace_args):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TF_CPP_MIN_LOG_LEVEL="2")
    # (Not --seccomp-bpf: strace 6.1 then ignores -P when injecting.)
    return subprocess.run(["strace", "-f", "-qq", *strace_args, sys.executable,
                           "-c", CHILD, str(target), str(seed)],
                          env=env, capture_output=True, text=True, timeout=300)


def _killed(done):
    return done.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)


@pytest.mark.skipif(_strace_problem() is not None, reason=str(_strace_problem()))
def test_overwrite_export_killed_at_the_renames_leaves_the_old_export_loadable(tmp_path):
    # Issue 16: SIGKILL at the saved_model.pb rename of an --overwrite export left the old
    # graph with new variables (the folder did not load). Kill a real export (another
    # process) when TensorFlow renames saved_model.pb into place, and when the new folder
    # is swapped in; each time the folder must still load and give the OLD model's numbers.
    target = tmp_path / "export"
    staging = staging_dir(target)
    images = tf.constant(np.random.RandomState(0).randint(0, 256, (2, 2, 2, 3)), tf.uint8)
    import keras

    def export(seed):
        keras.utils.set_random_seed(seed)
        model = ImageTransformer(image_height=2, image_width=2, hidden_size=8, filter_size=8,
                                 num_heads=2, num_decoder_layers=1, block_length=4)
        model({"targets": np.zeros((1, 2, 2, 3), np.uint8)})
        export_saved_model(model, target, jit_compile=False)
        return np.asarray(model.log_prob({"targets": images}))

    expected_old = export(1)
    old = _log_prob(target, images)
    np.testing.assert_allclose(old, expected_old, rtol=1e-5)

    # Killed at TensorFlow's saved_model.pb rename inside the new folder.
    pb_tmp = os.path.join(staging, "saved_model.pb.tmp" + "0" * 32)
    done = _run_child(target, 2, "-o", os.devnull, "-e", "trace=rename,renameat,renameat2",
                      "-P", pb_tmp, "-e", "inject=rename,renameat,renameat2:signal=KILL")
    assert _killed(done), ("the export was not stopped at the saved_model.pb rename; does "
                           "TensorFlow still write saved_model.pb.tmp<uuid4 hex>?",
                           done.returncode, done.stderr[-2000:])
    left = os.listdir(staging)
    assert "saved_model.pb" not in left and os.path.basename(pb_tmp) in left
    np.testing.assert_allclose(_log_prob(target, images), old, rtol=1e-6)
    # Killed at the swap of the complete new folder into place.
    done = _run_child(target, 2, "-o", os.devnull, "-e", "trace=renameat2", "-P", staging,
                      "-e", "inject=renameat2:signal=KILL")
    assert _killed(done), (done.returncode, done.stderr[-2000:])
    assert "saved_model.pb" in os.listdir(staging)  # The new export was complete.
    np.testing.assert_allclose(_log_prob(target, images), old, rtol=1e-6)

    # The next export completes, replaces the old one and removes the leftovers.
    expected_new = export(2)
    new = _log_prob(target, images)
    np.testing.assert_allclose(new, expected_new, rtol=1e-5)
    assert np.abs(new - old).max() > 1e-3
    assert sorted(os.listdir(tmp_path)) == ["export"]
