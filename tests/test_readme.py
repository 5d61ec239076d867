"""The README's promises: the config reference is current and CI runs the README's test command."""
from pathlib import Path

from rnn_train.config import REFERENCE_BEGIN as BEGIN, REFERENCE_END as END, config_reference

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_config_reference_matches_the_code():
    table = README.split(BEGIN)[1].split(END)[0].strip()
    assert table == config_reference(), "run: python -m rnn_train config and paste the table into README.md"


def test_readme_gives_the_main_command_and_ci_runs_its_test_command():
    assert "python train.py --config configs/pinyin_gru.yaml" in README
    assert "python predict.py --checkpoint runs/pinyin_gru/best.pt" in README
    test_command = "bash tests/install-system-packages.sh && pip install -r requirements.txt && python -m pytest -q"
    assert test_command in README
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_torch_is_pinned():
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text().split()
