"""`benchmarks/device_check.py` on CPU (`--smoke`): every section runs at toy
size with the kernels in the Pallas interpreter, so the script that a lent
GPU runs in one call cannot rot in between."""
import json
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def device_check():
  sys.path.insert(0, str(BENCHMARKS))
  try:
    import device_check as module  # pylint: disable=g-import-not-at-top
    yield module
  finally:
    sys.path.remove(str(BENCHMARKS))


def test_smoke_run_writes_every_section(device_check, tmp_path):
  out = tmp_path / "check.json"
  report = device_check.main(["--smoke", "--out", str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(report))
  assert report["smoke"] and report["backend"] == "cpu"
  # The interpreted kernels are exact enough to pass every check.
  assert report["validated"] == {"attention": True, "token_matching": True}
  ops = {row["op"] for row in report["correctness"]}
  assert ops == {"attention", "attention_xla_paths", "token_matching"}
  for row in report["correctness"]:
    assert row["ok"], row
  assert {r["dtype"] for r in report["correctness"]
          if r["op"] == "attention"} == {"float32", "bfloat16"}
  timed = {(r["impl"], r["n"]) for r in report["attention"]
           if r["status"] == "ok"}
  assert timed == {(impl, n) for impl in ("interpret", "jax_dpa")
                   for n in (16, 24, 40)}
  assert all(r["status"] == "ok" for r in report["matching"])
  assert "linear_fit" in report["memory"]["interpret"]
  runs = report["mae_step"]["runs"]
  assert [r["attn_impl"] for r in runs] == ["xla", "interpret"]
  # Both attention paths train the same model from the same state.
  assert runs[0]["loss"] == pytest.approx(runs[1]["loss"], rel=1e-3)
  assert all(0 < r["mfu"] < 1 for r in runs)
  assert "mae_b16_bf16_mfu" in report["targets"]


def test_a_failed_check_is_recorded_not_raised(device_check):
  def broken():
    raise RuntimeError("compile failed")
  row = device_check._guard(broken, op="attention")  # pylint: disable=protected-access
  assert row["ok"] is False and "compile failed" in row["error"]
  report = {"correctness": [{"op": "attention", "ok": True}, row,
                            {"op": "token_matching", "ok": True}]}
  assert device_check.validated(report) == {"attention": False,
                                            "token_matching": True}


def test_targets_read_the_measured_rows(device_check):
  rows = [dict(impl=impl, n=n, status="ok", fwd_bwd_ms=ms)
          for impl, n, ms in (("pallas", 1024, 1.2), ("cudnn", 1024, 1.0),
                              ("pallas", 4096, 2.6), ("cudnn", 4096, 2.0))]
  got = device_check.targets({"attention": rows})
  assert got["attention_fwd_bwd_over_cudnn"]["by_n"] == {"1024": 1.2,
                                                         "4096": 1.3}
  assert got["attention_fwd_bwd_over_cudnn"]["met"] is False


def test_refuses_a_cpu_backend_without_smoke(device_check):
  with pytest.raises(SystemExit, match="needs a GPU"):
    device_check.main([])
