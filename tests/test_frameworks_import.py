"""Importing cyctc (and using it) never imports a deep-learning framework: each bridge (cyctc.torch, cyctc.jax,
cyctc.tf, cyctc.keras) is imported only by name."""
import os
import subprocess
import sys

FRAMEWORKS = ("torch", "jax", "jaxlib", "optax", "tensorflow", "keras", "tf_keras")

CODE = """
import sys, numpy as np, cyctc
x = np.zeros((5, 2, 4), np.float32)
cyctc.ctc_loss(np.ones((2, 2), np.int32), x, [2, 1], [5, 5], return_grad=True)
cyctc.ctc_batch_cost(np.zeros((2, 1)), np.full((2, 5, 4), 0.25, np.float32), [5, 5], [1, 1])
cyctc.ctc_greedy_decoder(x, [5, 5])
cyctc.show_config()
import cyctc.decode, cyctc.align, cyctc.labels, cyctc.loss
print("LOADED", sorted(m for m in %r if m in sys.modules))
""" % (FRAMEWORKS,)


def test_import_cyctc_imports_no_framework():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"), cwd=os.path.dirname(__file__))
    assert "LOADED []" in out.stdout, out.stdout + out.stderr


def test_bridges_are_not_attributes_of_the_package():
    import cyctc

    for name in ("torch", "jax", "tf", "keras"):
        assert name not in cyctc.__all__
