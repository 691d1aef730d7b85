"""The key-value retrieval probe's data (`maskmodel.data.kv_retrieval`) and
the resume / aggregation logic of `experiments/seq_pretraining/run.py`."""
import json

import numpy as np
import pytest

from conftest import load_experiment
from maskmodel.data import kv_retrieval, sequences
from maskmodel.data.tokenizers import get_tokenizer

SOURCE = '''"""Doc."""
import os
BUFSIZE = 8192
encoding = 'latin-1'
nothing = None
flag = True
a, b = 1, 2
x = y = 3
pair = (1, 2)
long_name_that_is_far_too_long = 1
RATE = 0.25  # a comment
neg = -1

class K:
    MODE='rb'
    def f(self):
        count = 10
        return count
'''


def decode(ids):
  return bytes(int(i) for i in ids if i < 256).decode()


def test_assignments_keep_one_line_number_and_string_literals():
  facts = kv_retrieval.assignments(SOURCE, max_line=24)
  assert facts == [("BUFSIZE", "BUFSIZE = 8192", "8192"),
                   ("encoding", "encoding = 'latin-1'", "'latin-1'"),
                   ("MODE", "MODE='rb'", "'rb'"),
                   ("count", "count = 10", "10")]
  assert kv_retrieval.assignments("def f(:\n", 24) == []


@pytest.fixture(scope="module")
def pool():
  return kv_retrieval.fact_pool()


def test_fact_pool_is_from_held_out_files_only(pool):
  files = sequences.stdlib_files(sequences.stdlib_dir())
  test_text = "\n".join(t for r, t in files if sequences.pycode_split(r) == "test")
  assert len(pool) > 200
  assert len({line for _, line, _ in pool}) == len(pool)
  for name, line, value in pool:
    assert line in test_text and line.startswith(name) and line.endswith(value)
    assert value not in ("None", "True", "False") and len(line) <= 24


def test_examples_hold_the_queried_fact_at_its_position(pool):
  ex = kv_retrieval.kv_examples(num_examples=12, num_facts=3, seed=5, pool=pool)
  closed = kv_retrieval.kv_examples(num_examples=12, num_facts=3, seed=5,
                                    pool=pool, closed_book=True)
  again = kv_retrieval.kv_examples(num_examples=12, num_facts=3, seed=5, pool=pool)
  for k in ex:
    np.testing.assert_array_equal(ex[k], again[k])
  np.testing.assert_array_equal(ex["position"], np.arange(12) % 3)
  tok = get_tokenizer("bytes")
  assert (ex["tokens"][:, 0] == tok.cls_id).all()
  for i in range(12):
    text = decode(ex["tokens"][i][ex["mask"][i]])
    *facts, query = text.split("\n")
    value = decode(ex["tokens"][i][ex["targets"][i]])
    assert len(facts) == 3 and query.endswith(value) and value
    # The query repeats the fact at `position`, and the value tokens end the
    # window, right before [SEP].
    assert facts[ex["position"][i]] == query
    assert len({f.split("=")[0].strip() for f in facts}) == 3
    last = np.flatnonzero(ex["mask"][i])[-1]
    assert ex["tokens"][i][last] == tok.sep_id and ex["targets"][i][last - 1]
    # Closed book: the same query, and its fact nowhere in the window.
    c_facts = decode(closed["tokens"][i][closed["mask"][i]]).split("\n")
    assert c_facts[-1] == query and query not in c_facts[:-1]
    np.testing.assert_array_equal(
        np.delete(c_facts[:-1], ex["position"][i]),
        np.delete(facts, ex["position"][i]))


def test_probe_errors_name_the_fix(pool):
  with pytest.raises(kv_retrieval.ProbeError, match="multiple of num_facts"):
    kv_retrieval.kv_examples(num_examples=10, num_facts=4, pool=pool)
  with pytest.raises(kv_retrieval.ProbeError, match="more than seq_len"):
    kv_retrieval.kv_examples(num_examples=4, num_facts=4, seq_len=64, pool=pool)
  with pytest.raises(kv_retrieval.ProbeError, match="at least 2"):
    kv_retrieval.kv_examples(num_examples=4, num_facts=1, pool=pool)


def test_retrieval_scores_count_value_tokens_and_exact_matches(pool):
  ex = kv_retrieval.kv_examples(num_examples=8, num_facts=4, seed=1, pool=pool)
  tokens, targets = ex["tokens"], ex["targets"]
  oracle = np.roll(tokens, -1, axis=1)   # predicted[:, t] = tokens[:, t + 1]
  s = kv_retrieval.retrieval_scores(oracle, tokens, targets, ex["position"])
  assert s["token_accuracy"] == 1.0 and s["exact_match"] == 1.0
  assert s["token_accuracy_at"] == [1.0] * 4 and s["examples"] == 8
  # One wrong value token in example 0 (position 0); everything else right.
  wrong = oracle.copy()
  t = np.flatnonzero(targets[0])[0]
  wrong[0, t - 1] = (tokens[0, t] + 1) % 256
  s = kv_retrieval.retrieval_scores(wrong, tokens, targets, ex["position"])
  n = targets.sum()
  assert s["token_accuracy"] == pytest.approx((n - 1) / n)
  assert s["exact_match"] == 7 / 8 and s["exact_match_at"] == [0.5, 1, 1, 1]
  n0 = targets[ex["position"] == 0].sum()
  assert s["token_accuracy_at"][0] == pytest.approx((n0 - 1) / n0)
  # A model that predicts every token unchanged (a copy of the current one)
  # gets a value token right only where it repeats the token before it.
  same = kv_retrieval.retrieval_scores(tokens, tokens, targets, ex["position"])
  repeats = (tokens[:, 1:] == tokens[:, :-1])[targets[:, 1:]].mean()
  assert same["token_accuracy"] == pytest.approx(repeats)


@pytest.fixture(scope="module")
def runner():
  return load_experiment("seq_pretraining")


def test_finished_run_is_not_run_again_and_budgets_are_kept(runner, tmp_path):
  folder = tmp_path / "pycode" / "clm" / "seed1"
  folder.mkdir(parents=True)
  recorded = {"row": "pycode/clm", "seed": 1, "final": {"knn_accuracy": 0.5}}
  (folder / "result.json").write_text(json.dumps(recorded))
  # No training: a finished run comes back as recorded.
  assert runner.run_one("pycode/clm", 1, 400, tmp_path) == recorded
  # A genome run recorded before its config asked for balanced accuracy
  # gets its evals again; one with it, or a pycode run, does not.
  old = {"final": {"knn_accuracy": 0.9}}
  genome = runner.run_config("genome/electra", seed=0)
  assert runner._lacks_balanced_accuracy(old, genome)  # pylint: disable=protected-access
  new = {"final": {"knn_accuracy": 0.9, "knn_balanced_accuracy": 0.6}}
  assert not runner._lacks_balanced_accuracy(new, genome)  # pylint: disable=protected-access
  pycode = runner.run_config("pycode/clm", seed=0)
  assert not runner._lacks_balanced_accuracy(old, pycode)  # pylint: disable=protected-access
  budget = {"flops_per_step": {}, "steps": {"pycode/clm": 400}}
  (tmp_path / "flops.json").write_text(json.dumps(budget))
  assert runner.budgets(tmp_path) == budget


def test_run_config_reads_the_method_configs(runner):
  c = runner.run_config("pycode/mlm40", seed=2, steps=300)
  assert (c.task.name, c.task.clm_fraction, c.seed, c.total_steps) == (
      "clm_mlm", 0.0, 2, 300)
  assert c.evals.names == ("knn", "linear_probe", "low_label", "mlm", "clm")
  assert c.evals.low_label.fractions == (runner.FINETUNE_FRACTION,)
  g = runner.run_config("genome/electra", seed=0)
  assert (g.task.name, g.data.label, g.data.num_classes) == ("electra",
                                                             "coding", 2)
  assert not g.evals.compare_random_init
  m = runner.run_config("genome/mlm15_eqflops", seed=0)
  assert m.data.label == "coding" and m.evals.compare_random_init


def run(row, seed, knn, finetune=None):
  r = {"row": row, "seed": seed, "final": {"knn_accuracy": knn},
       "random_init": {}, "raw": {}}
  if finetune:
    r["finetune"] = finetune
  return r


def test_summary_and_claim_verdicts(runner):
  results = [run("pycode/mlm40", s, 0.60 + 0.01 * s, [0.5, 0.6, 0.7])
             for s in range(3)]
  results += [run("pycode/clm", s, 0.50 + 0.01 * s, [0.5, 0.5, 0.5])
              for s in range(3)]
  results += [run("pycode/clm_mlm", s, 0.605 + 0.01 * s) for s in range(3)]
  table = runner.summarize(results)
  cell = table["pycode"]["mlm40"]["knn_accuracy"]
  assert cell["n"] == 3 and cell["mean"] == pytest.approx(0.61)
  assert cell["std"] == pytest.approx(0.01)
  assert table["pycode"]["mlm40"]["finetune_spread"]["mean"] == pytest.approx(0.1)
  verdicts = {(c["claim"], c["metric"]): c["verdict"]
              for c in runner.claims(table)}
  assert verdicts[("MLM beats CLM on representations", "knn_accuracy")] == "holds"
  # Lower spread is better: CLM's 0 against MLM's 0.1.
  assert verdicts[("CLM is more stable to fine-tune than MLM (smaller spread)",
                   "finetune_spread")] == "holds"
  assert verdicts[("CLM -> MLM beats MLM alone at a fixed budget",
                   "knn_accuracy")] == "within noise"
  one = runner.claims(runner.summarize(results[:1] + results[3:4]))
  assert {c["verdict"] for c in one} == {"ahead on one seed"}
