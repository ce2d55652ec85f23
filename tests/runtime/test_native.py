"""The worker never walks the dynamic loader: every scan of the native libraries (ours and
scikit-learn's) happens on the training thread.

A scan (threadpoolctl's ``dl_iterate_phdr``) on the worker while another thread imported an
extension module deadlocked a real CLI fit (worker, preload thread and training thread all
waiting). A deadlock needs an unlucky moment; where the scans happen does not, so that is
what is checked, in a fresh process (a scan is kept per process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SUPPORT = Path(__file__).parents[1] / "support"

SCRIPT = textwrap.dedent("""
    import json, sys, threading
    import threadpoolctl

    scans = []
    real_init = threadpoolctl.ThreadpoolController.__init__

    def recording_init(self, *args, **kwargs):
        scans.append(threading.current_thread().name)
        real_init(self, *args, **kwargs)

    threadpoolctl.ThreadpoolController.__init__ = recording_init

    from digits import DigitsModel, loaders, trainer
    from lightning_embproj import EmbeddingProjector, read_projections

    out = sys.argv[1]
    projector = EmbeddingProjector(label_key=1, reducers=["pca", "tsne"], clusters="kmeans",
                                   max_samples=200, output_dir=out)
    trainer(out, [projector], max_epochs=3).fit(DigitsModel(), *loaders())
    runs = sorted(read_projections(out)["val_index"].unique().tolist())
    print("RESULT " + json.dumps({"scans": scans, "runs": runs}))
""")


def test_native_libraries_are_scanned_on_the_training_thread_only(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["runs"] == [0, 1, 2]  # reduced, clustered: the worker limited its threads
    assert result["scans"], "nothing scanned: the limits were not applied"
    assert set(result["scans"]) == {"MainThread"}, result["scans"]
