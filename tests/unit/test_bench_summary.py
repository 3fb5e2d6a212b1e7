"""The benchmarks' shared summary of samples: what their JSON reports."""
from networking_dvs_fabric.cmd.bench import poll, summarize


def test_summary_names_each_point_in_the_unit_asked():
    samples = [i / 1000 for i in range(1, 101)]          # 1 ms .. 100 ms, shuffled below
    samples = samples[50:] + samples[:50]
    assert summarize(samples, "p50", "p99", "max") == {
        "n": 100, "p50_ms": 50.5, "p99_ms": 99.0, "max_ms": 100.0}
    assert summarize(samples, "median", "p95", unit="s", digits=3) == {
        "n": 100, "median_s": 0.051, "p95_s": 0.095}


def test_no_samples_gives_only_the_count():
    assert summarize([], "median", "p99") == {"n": 0}


def test_poll_returns_the_first_true_answer_or_none_after_the_timeout():
    answers = iter([None, 0, "found"])
    assert poll(lambda: next(answers), timeout=5, interval=0.001) == "found"
    assert poll(lambda: None, timeout=0.05, interval=0.01) is None
