"""The exit-code table of docs/reliability.md, enforced on every command of both CLIs:
0 ok, 1 data error, 2 usage error, 3 partial (some pairs failed, the rest scored), 130 interrupted.
Every failure is one ``error:`` line on stderr, never a traceback."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import gapeval.cli
import lpips_sat.cli

MISSING = "/nonexistent/gapeval-test"

#: (cli, command module or None, argv of a data error: inputs that do not exist or are unknown)
DATA_ERRORS = {
    "score": ("gapeval", "gapeval.score", ["score", "--pred", MISSING, "--target", MISSING, "--out", "{tmp}/o", "--weights", "random-tiny"]),
    "degrade": ("gapeval", "gapeval.degrade", ["degrade", "--hr", MISSING, "--out", "{tmp}/o", "--profile", "bicubic"]),
    "gap": ("gapeval", "gapeval.gap", ["gap", "--run", f"a={MISSING}", "--run", f"b={MISSING}", "--out", "{tmp}/o"]),
    "pairs": ("gapeval", "gapeval.pairs", ["pairs", "--hr", MISSING, "--lr", MISSING, "--out", "{tmp}/o"]),
    "merge": ("gapeval", "gapeval.shards", ["merge", f"{MISSING}/s1", f"{MISSING}/s2", "--out", "{tmp}/o"]),
    "study": ("gapeval", "gapeval.study.cli", ["study", "run", f"{MISSING}.yaml", "--out", "{tmp}/o"]),
    "models": ("gapeval", "gapeval.infer.cli_models", ["models", "no-such-model"]),  # no data inputs: an unknown name is usage (2)
    "infer": ("gapeval", "gapeval.infer.cli_infer", ["infer", "--model", "sr3", "--input", MISSING, "--out", "{tmp}/o", "--checkpoint", f"{MISSING}.safetensors"]),
    "train": ("gapeval", "gapeval.infer.cli_train", ["train", "sr3", "--lr", MISSING, "--hr", MISSING, "--out", "{tmp}/o", "--steps", "1"]),
    "compare": ("lpips-sat", None, ["compare", f"{MISSING}/a.npy", f"{MISSING}/b.npy"]),
    "info": ("lpips-sat", None, ["info", "--weights", f"{MISSING}.safetensors"]),
    "pretrain": ("lpips-sat", "lpips_sat.train.pretrain", ["pretrain", "--data", MISSING, "--out", "{tmp}/o.safetensors", "--steps", "1"]),
    "calibrate": ("lpips-sat", "lpips_sat.train.calibrate", ["calibrate", "--backbone", f"{MISSING}.safetensors", "--data", MISSING, "--out", "{tmp}/o"]),
}

#: Option values that are usage errors at parse time (exit 2), per command.
BAD_VALUES = [
    ["score", "--tile", "10"],
    ["score", "--tile", "100"],
    ["score", "--workers", "0"],
    ["score", "--batch-size", "0"],
    ["score", "--data-range", "0"],
    ["score", "--pred-scale", "-5"],
    ["score", "--pred-scale", "nan"],
    ["score", "--target-scale", "inf"],
    ["score", "--sr-factor", "0.5"],
    ["score", "--device", "tpu"],
    ["score", "--invalid-pred", "ignore"],
    ["degrade", "--hr-scale", "0"],
    ["degrade", "--gsd", "-10"],
    ["compare", "--device", "tpu"],
    ["compare", "--scale", "0"],
]
if not __import__("torch").cuda.is_available():
    BAD_VALUES += [["score", "--device", "cuda"], ["compare", "--device", "cuda:0"]]


def _main(cli: str):
    return gapeval.cli.main if cli == "gapeval" else lpips_sat.cli.main


def _run(cli: str, argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = _main(cli)(argv)
    except SystemExit as exc:  # argparse
        code = int(exc.code)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def _fill(argv: list[str], tmp_path: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp_path)) for a in argv]


@pytest.mark.parametrize("command", sorted(DATA_ERRORS))
def test_data_error_exits_1_with_one_error_line(command, tmp_path, capsys):
    cli, _, argv = DATA_ERRORS[command]
    code, err = _run(cli, _fill(argv, tmp_path), capsys)
    assert code == (2 if command == "models" else 1), err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"{cli} {argv[0]}: error: "), err


@pytest.mark.parametrize("command", sorted(DATA_ERRORS))
def test_unknown_option_exits_2(command, tmp_path, capsys):
    cli, _, argv = DATA_ERRORS[command]
    code, err = _run(cli, _fill(argv, tmp_path) + ["--no-such-option"], capsys)
    assert code == 2 and "error:" in err and "--no-such-option" in err


@pytest.mark.parametrize("bad", BAD_VALUES, ids=lambda a: " ".join(a))
def test_bad_option_values_are_usage_errors(bad, tmp_path, capsys):
    command, option, value = bad
    cli, _, argv = DATA_ERRORS[command]
    code, err = _run(cli, _fill(argv, tmp_path) + [option, value], capsys)
    assert code == 2 and f"argument {option}" in err and "error:" in err, err


@pytest.mark.parametrize("command", sorted(DATA_ERRORS))
def test_interrupt_exits_130(command, tmp_path, capsys, monkeypatch):
    cli, module, argv = DATA_ERRORS[command]

    def interrupted(args):
        raise KeyboardInterrupt

    if module is None:
        monkeypatch.setattr(lpips_sat.cli, f"run_{command}", interrupted)
    else:
        monkeypatch.setattr(importlib.import_module(module), "run", interrupted)
    code, err = _run(cli, _fill(argv, tmp_path), capsys)
    assert code == 130 and "interrupted" in err


def test_missing_extra_exits_1(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "rasterio", None)
    code, err = _run("gapeval", ["score", "--help"], capsys)
    assert code == 1 and 'pip install "lpips-sat[eval]"' in err
