"""The zoo's feature-spread diagnosis reads what a run trained: the params
and the task state (a teacher's features), not the init's, and keeps the
frozen part the run started with."""
import jax.numpy as jnp
import numpy as np

from conftest import load_experiment
from maskmodel import checkpoint

spread = load_experiment("mim_zoo", "feature_spread.py")


def test_saved_state_restores_params_and_teacher_and_keeps_frozen(tmp_path):
  init = {"params": {"w": jnp.zeros((2, 6))},
          "task_state": {"teacher": {"w": jnp.zeros((2, 6))},
                         "frozen": {"codebook": jnp.full((4, 3), 7.0)}}}
  trained = {"params": {"w": jnp.arange(12.0).reshape(2, 6)},
             "task_state": {"teacher": {"w": jnp.ones((2, 6))},
                            "frozen": {"codebook": jnp.full((4, 3), 7.0)}}}
  frozen = {"params": {"w": False},
            "task_state": {"teacher": {"w": False},
                           "frozen": {"codebook": True}}}
  ckpt = checkpoint.Checkpointer(tmp_path, frozen=frozen)
  ckpt.save(5, trained, {"epoch": 0})
  ckpt.wait()
  params, task_state = spread.saved_state(tmp_path.resolve(), init)
  np.testing.assert_array_equal(params["w"], trained["params"]["w"])
  np.testing.assert_array_equal(task_state["teacher"]["w"], np.ones((2, 6)))
  np.testing.assert_array_equal(task_state["frozen"]["codebook"],
                                init["task_state"]["frozen"]["codebook"])


def test_saved_state_reshapes_a_flat_qkv(tmp_path):
  """Runs from before the qkv's head axis stored it flat."""
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, {"params": {"qkv": jnp.arange(24.0).reshape(4, 6)},
                "task_state": {}}, {})
  ckpt.wait()
  like = {"params": {"qkv": jnp.zeros((4, 3, 2))}, "task_state": {}}
  params, task_state = spread.saved_state(tmp_path.resolve(), like)
  assert params["qkv"].shape == (4, 3, 2) and task_state == {}
  np.testing.assert_array_equal(params["qkv"].reshape(4, 6),
                                np.arange(24.0).reshape(4, 6))
