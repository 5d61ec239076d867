"""TensorBoard, served for real on 127.0.0.1 over a run's directory, shows what a user should see first:
training and validation loss (and bits per character) on one chart each, the hparams only in the
HPARAMS view, whose metrics are the series' last points (rnn_train/training/events.py)."""
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from rnn_train.training.trainer import train
from tests.browser import open_page
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body=None):
    headers = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A finished tiny run under runs/, and TensorBoard serving runs/ on a loopback port."""
    runs = tmp_path_factory.mktemp("tb") / "runs"
    result = train(tiny_config(runs, name="run"), runs / "run", quiet=True, cache_dir=runs.parent / "cache")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(runs), "--host", "127.0.0.1",
                               "--port", str(port), "--load_fast", "false", "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # until the server answers and has read the three directories of the run
            try:
                if {"run", "run/train", "run/val"} <= set(_get(url + "/data/plugin/scalars/tags")) | set(_get(url + "/data/runs")):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "TensorBoard did not come up"
            time.sleep(1)
        yield url, result
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_train_and_val_are_curves_of_one_chart_and_no_hparam_chart_is_left(served):
    url, _ = served
    tags = _get(url + "/data/plugin/scalars/tags")  # run -> tag -> metadata
    for tag in ("loss/cross_entropy", "loss/bits_per_char", "loss/perplexity"):
        assert tag in tags["run/train"] and tag in tags["run/val"], tag
    assert not tags.get("run")  # the run directory itself: hparams and text only
    assert not [t for run in tags.values() for t in run if t.startswith("hparam")]


def test_the_hparams_view_lists_the_runs_metrics_as_the_last_points(served):
    url, result = served
    experiment = _get(url + "/data/plugin/hparams/experiment", {"experimentName": ""})
    metrics = {(m["name"].get("group", ""), m["name"]["tag"]) for m in experiment["metricInfos"]}
    assert {("train", "loss/cross_entropy"), ("val", "loss/cross_entropy"), ("val", "loss/cross_entropy_best"),
            ("train", "speed/tokens_per_s")} <= metrics
    groups = _get(url + "/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 10, "colParams": [],
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]})
    (group,) = groups["sessionGroups"]
    values = {(m["name"].get("group", ""), m["name"]["tag"]): m["value"] for m in group["metricValues"]}
    assert values[("val", "loss/cross_entropy")] == pytest.approx(result.val_loss, rel=1e-5)
    assert values[("val", "loss/cross_entropy_best")] == pytest.approx(result.best_val_loss, rel=1e-5)
    hparams = {h["name"] for h in experiment["hparamInfos"]}
    assert {"model.cell", "train.lr", "data.num_steps"} <= hparams


def test_in_chromium_the_loss_charts_come_first(served, browser, tmp_path):
    url, _ = served
    o = open_page(browser, url + "/#scalars", viewport=(1400, 1000), block_network=False)
    page = o.page
    page.wait_for_selector("text=loss/cross_entropy", timeout=60_000)
    page.wait_for_selector("text=optim/lr", timeout=60_000)
    first_loss = page.locator("text=loss/bits_per_char").first.bounding_box()["y"]
    assert first_loss < page.locator("text=optim/lr").first.bounding_box()["y"]
    assert page.locator("text=hparam/").count() == 0
    page.screenshot(path=str(tmp_path / "scalars.png"))
    assert all(r.startswith("http://127.0.0.1:") or r.startswith("data:") for r in o.requests), o.requests
    page.close()
