"""ctrlab report: leaderboard arithmetic, published numbers, offline HTML, and a real headless
browser (Debian's chromium, installed by `make test`) rendering it without console errors."""
from __future__ import annotations

import os
import re
import shutil
import statistics

import pytest

from ctrlab.bench import ResultsStore
from ctrlab.bench.report import build_report, leaderboard, load_published

ENV = {"python": "3.11", "torch": "2.13.0", "ctrlab": "0.1.0", "cpu": "test cpu", "cores": 2, "cuda": False,
       "git_commit": "abc1234"}


def add_run(store, key, model, seed, test_auc, dataset="frappe_x1_subset", dropout=0.2, params=1000, epochs=4):
    config = {"dataset": dataset, "model": model, "model_params": {"net_dropout": dropout},
              "trainer": {"seed": seed, "num_threads": 1, "progress": False, "epochs": 100}, "output": f"runs/{key}"}
    store.start_run(key, plan="p", dataset=dataset, model=model, seed=seed, hparam_set="preset", protocol="bars",
                    config=config, run_dir=f"runs/{key}", environment=ENV)
    history = [{"epoch": e, "valid_AUC": 0.9 + e / 100 + seed / 1e5, "valid_logloss": 0.3, "train_loss": 0.4,
                "lr": 1e-3, "seconds": 2.0, "samples_per_s": 20000.0 + seed, "best_epoch": e} for e in range(1, epochs + 1)]
    store.finish_run(key, {"parameters": params, "epochs": epochs, "train_seconds": 8.0, "seconds_per_epoch": 2.0,
                           "valid": {"AUC": 0.95, "logloss": 0.3}, "test": {"AUC": test_auc, "logloss": 0.31}}, history)


@pytest.fixture
def store_path(tmp_path):
    db = tmp_path / "r.sqlite"
    with ResultsStore(db) as s:
        for i, (seed, auc) in enumerate([(1, 0.960), (2, 0.962), (3, 0.964)]):
            add_run(s, f"dnn{i}", "DNN", seed, auc, params=400_000)
        for i, (seed, auc) in enumerate([(1, 0.970), (2, 0.974)]):
            add_run(s, f"fm{i}", "FinalMLP", seed, auc, params=250_000)
        add_run(s, "dnn-other", "DNN", 1, 0.950, dropout=0.4, params=400_000)  # another config: own row
        add_run(s, "ml", "DNN", 1, 0.71, dataset="movielens_100k", params=100_000)
    return db


def test_leaderboard_groups_seeds_and_ranks_by_mean_test_auc(store_path):
    with ResultsStore(store_path) as s:
        boards = leaderboard(s)
    assert list(boards) == ["frappe_x1_subset", "movielens_100k"]
    rows = boards["frappe_x1_subset"]
    assert [r.model for r in rows] == ["FinalMLP", "DNN", "DNN"]
    assert rows[0].stat("test_auc") == pytest.approx((0.972, statistics.stdev([0.970, 0.974])))
    assert rows[1].seeds == [1, 2, 3] and rows[1].stat("test_auc")[0] == pytest.approx(0.962)
    assert rows[2].seeds == [1] and rows[2].stat("test_auc") == (0.95, 0.0)
    # the two DNN rows share a label, so the report tells them apart by config hash
    assert rows[1].label != rows[2].label and "#" in rows[1].label


def test_report_files_tables_and_published_numbers(store_path, tmp_path):
    files = build_report(store_path, tmp_path / "rep")
    md = files.markdown.read_text()
    page = files.html.read_text()
    assert len(files.plots) == 6 and all(p.stat().st_size > 1000 for p in files.plots)
    pub = load_published()["Frappe_x1"]
    assert f"{pub['FinalMLP']['auc']:.4f} / {pub['FinalMLP']['logloss']:.4f}" in md  # beside the FinalMLP row
    assert "not comparable" in md and "docs/CTR/leaderboard/frappe_x1.csv" in md
    assert "| 1 | FinalMLP | 2 | 0.9720 ± 0.0028 | – |" in md
    from scipy.stats import ttest_ind

    p = ttest_ind([0.960, 0.962, 0.964], [0.970, 0.974], equal_var=False).pvalue
    assert "| 2 | DNN [preset#" in md and f"| 0.9620 ± 0.0020 | -0.0100 ({p:.2g}) |" in md  # gap and Welch p to #1
    assert "BARS" not in md.split("## movielens_100k")[1].split("##")[0]  # no published split for it
    assert "best trial = the completed trial with the highest mean validation AUC" in page  # the rule
    assert "abc1234" in page and "test cpu" in page  # environment
    # offline: nothing is fetched from anywhere (no CDN scripts, styles, fonts or images)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert page.count("<svg") == 6


def test_missing_or_empty_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results store"):
        build_report(tmp_path / "missing.sqlite", tmp_path / "rep")
    assert not (tmp_path / "missing.sqlite").exists()  # not created as a side effect
    ResultsStore(tmp_path / "empty.sqlite").close()
    with pytest.raises(ValueError, match="no finished runs"):
        build_report(tmp_path / "empty.sqlite", tmp_path / "rep")


# ---- a real browser ------------------------------------------------------------------------------
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("chromium/chromedriver missing in CI: `make test` installs Debian's chromium chromium-driver")
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1300,2000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def test_report_renders_in_headless_chromium(store_path, tmp_path, browser):
    from selenium.webdriver.common.by import By

    files = build_report(store_path, tmp_path / "rep")
    browser.get(files.html.resolve().as_uri())
    assert browser.title == "ctrlab benchmark report"
    tables = browser.find_elements(By.CSS_SELECTOR, "table.leaderboard")
    assert len(tables) == 2
    assert len(tables[0].find_elements(By.CSS_SELECTOR, "tbody tr")) == 3
    svgs = browser.find_elements(By.CSS_SELECTOR, "figure.plot svg")
    assert len(svgs) == 6
    for svg in svgs:  # laid out with a real size, and drawn (matplotlib paths inside)
        assert svg.size["width"] > 200 and svg.size["height"] > 100
        assert svg.find_elements(By.CSS_SELECTOR, "path")
    # the inline script works: clicking "test AUC" sorts the rows (descending, then ascending)
    header = next(th for th in tables[0].find_elements(By.TAG_NAME, "th") if th.text.strip() == "test AUC")
    header.click()
    first = [r.find_elements(By.TAG_NAME, "td")[1].text for r in tables[0].find_elements(By.CSS_SELECTOR, "tbody tr")]
    header.click()
    second = [r.find_elements(By.TAG_NAME, "td")[1].text for r in tables[0].find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert first[0] == "FinalMLP" and second[0].startswith("DNN") and second == first[::-1]
    assert console_errors(browser) == []


def test_the_console_check_catches_a_broken_page(tmp_path, browser):
    """The check above can fail: a page with a script error and a missing image is caught."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head><title>x</title><link rel='icon' href='data:,'></head><body>"
                    "<img src='missing.png'><script>undefinedFunction();</script></body></html>")
    browser.get(page.resolve().as_uri())
    errors = console_errors(browser)
    assert any("undefinedFunction" in e for e in errors)


def test_a_plan_file_selects_exactly_its_runs(tmp_path):
    """--plan PLAN.yaml reports the plan's runs by key, whichever plan label they were stored under."""
    import yaml

    from ctrlab.bench import expand, load_plan
    from ctrlab.bench.report import select_runs

    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump({"name": "mine", "grids": [{"datasets": ["frappe_x1_subset"],
                                                                     "models": ["LR"], "seeds": [7]}]}))
    (job,) = expand(load_plan(plan_file))
    with ResultsStore(tmp_path / "r.sqlite") as s:
        add_run(s, job.key, "LR", 7, 0.93)   # stored with plan label "p", not "mine"
        add_run(s, "unrelated", "DNN", 1, 0.95)
        assert [r["key"] for r in select_runs(s, str(plan_file))] == [job.key]
        assert select_runs(s, "mine") == [] and len(select_runs(s, "p")) == 2


def test_cli_report_without_a_store_is_a_clean_error(tmp_path, capsys):
    from ctrlab.cli import main

    assert main(["report", "--db", str(tmp_path / "none.sqlite"), "--output", str(tmp_path / "rep")]) == 2
    assert "no results store" in capsys.readouterr().err
