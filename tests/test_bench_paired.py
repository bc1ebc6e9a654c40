"""benchmarks/bench_triplet.py --paired: one worker per engine and case
builds the step for both thread counts and alternates blocks of them."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_triplet", os.path.join(ROOT, "benchmarks", "bench_triplet.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_scaling_writes_one_ratio_per_block(tmp_path, capsys):
    bench = _bench()
    out = tmp_path / "scaling.json"
    record = bench.main(["--paired", "--cases", "lenet", "--engines", "layergraph",
                         "--blocks", "3", "--steps", "1", "--warmup", "1", "--json", str(out)])
    row = record["scaling"]["lenet"]["layergraph"]
    assert len(row["ratios"]) == 3 and all(r > 0 for r in row["ratios"])
    assert set(row["images_per_s"]) == {"1", "2"}
    saved = json.loads(out.read_text())
    assert saved["protocol"]["paired"] and saved["scaling"]["lenet"]["layergraph"]["ratios"]
    assert "lenet     layergraph" in capsys.readouterr().out


def test_paired_rounds_pool_their_ratios(tmp_path, capsys):
    """--repeat: a worker per round, the ratios pooled, each round's median
    kept and printed."""
    bench = _bench()
    record = bench.main(["--paired", "--cases", "lenet", "--engines", "layergraph",
                         "--blocks", "2", "--steps", "1", "--warmup", "1", "--repeat", "2",
                         "--json", str(tmp_path / "s.json")])
    row = record["scaling"]["lenet"]["layergraph"]
    assert len(row["ratios"]) == 4 and len(row["round_medians"]) == 2
    assert record["protocol"]["repeat"] == 2
    out = capsys.readouterr().out
    assert "round 2" in out and " rounds " in out


def test_pool_merges_the_block_pairs_of_several_files(tmp_path, capsys):
    bench = _bench()
    paths = []
    for i, ratios in enumerate(([1.5, 1.7, 1.9], [1.6, 2.0])):
        record = {"scaling": {"lenet": {"layergraph": {"ratios": ratios,
                                                       "ratio": bench.H.spread(ratios)}}}}
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(record))
    out = bench.main(["--pool"] + [str(p) for p in paths])
    assert out["lenet"]["layergraph"] == {"median": 1.7, "min": 1.5, "max": 2.0, "n": 5}
    assert "files 1.70/1.80" in capsys.readouterr().out


def test_paired_needs_two_thread_counts():
    bench = _bench()
    with pytest.raises(SystemExit):
        bench.parse(["--paired", "--threads", "2"])
