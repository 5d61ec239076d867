"""The README's promises: its two fresh-machine commands, CI running its test command, and a config
reference (docs/config.md, linked from the README) that matches the code."""
from pathlib import Path

from rnn_train.config import REFERENCE_BEGIN as BEGIN, REFERENCE_END as END, config_reference

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_config_reference_matches_the_code():
    page = (ROOT / "docs" / "config.md").read_text()
    table = page.split(BEGIN)[1].split(END)[0].strip()
    assert table == config_reference(), "run: python -m rnn_train config and paste the table into docs/config.md"
    assert "(docs/config.md)" in README


def test_readme_gives_the_main_command_and_ci_runs_its_test_command():
    main = ("pip install -r requirements.txt && python train.py --config configs/pinyin_gru.yaml --force && "
            "python predict.py --checkpoint runs/pinyin_gru/best.pt --prefix \"zhong guo\" -k 50")
    assert main in README.splitlines()
    test_command = "bash tests/install-system-packages.sh && pip install -r requirements.txt && python -m pytest -q"
    assert test_command in README.splitlines()
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_torch_is_pinned():
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text().split()
