"""The command line: every verb end to end, and bad input as one clear line with exit 2."""

import json
import subprocess
import sys

import pytest

from rnnkit.cli import main
from conftest import expect_cli_error, run_cli

TEXT = "\n".join(["the cat sat on the mat", "the dog sat on the log"] * 40) + "\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = root / "model"
    code = main(["train", "lm", "--data", str(corpus), "--out", str(out), "--level", "char",
                 "--hidden", "16", "--layers", "1", "--batch-size", "4", "--bptt", "16",
                 "--max-steps", "6", "--sample", "0", "--no-progress"])
    assert code == 0
    return root, corpus, out


_run, _expect_error = run_cli, expect_cli_error


def test_cli_train_then_generate_eval_score(trained, capsys):
    root, corpus, out = trained
    code, text, _ = _run(["generate", str(out), "--prime", "the ", "--length", "20",
                          "--seed", "1", "--json"], capsys)
    assert code == 0 and json.loads(text)["prime"] == "the "
    code, text, _ = _run(["eval", str(out), "--data", str(corpus), "--json"], capsys)
    figures = json.loads(text)
    assert code == 0 and figures["bpc"] > 0 and figures["tokens"] > 0
    code, text, _ = _run(["score", str(out), str(corpus)], capsys)
    lines = text.splitlines()
    assert code == 0 and lines[0].split("\t")[:3] == ["line", "logprob", "log10prob"]
    assert len(lines) == 1 + TEXT.count("\n")


def test_config_file_and_command_line_override(trained, tmp_path, capsys):
    _, corpus, _ = trained
    config = tmp_path / "lm.toml"
    config.write_text(f'data = "{corpus}"\nlevel = "char"\nhidden_size = 12\nlayers = 1\n'
                      'max_steps = 2\nbatch_size = 4\nbptt = 8\n', encoding="utf-8")
    out = tmp_path / "m"
    code, _, _ = _run(["train", "lm", "--config", str(config), "--hidden", "10", "--out",
                       str(out), "--sample", "0", "--no-progress"], capsys)
    assert code == 0
    saved = json.loads((out / "config.json").read_text())["model"]
    assert saved["hidden_size"] == 10 and saved["num_layers"] == 1
    config.write_text('lr = "fast"\n', encoding="utf-8")
    _expect_error(["train", "lm", "--config", str(config), "--out", str(tmp_path / "m2")],
                  capsys, "lr: expected float")
    _expect_error(["train", "lm", "--data", str(corpus), "--out", str(out)], capsys,
                  "holds a model or run already")



def test_bad_data_files(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    _expect_error(["train", "lm", "--data", str(empty), "--out", str(tmp_path / "o1")],
                  capsys, "empty.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9 ok\nmore text\n" * 5)
    _expect_error(["train", "lm", "--data", str(latin), "--out", str(tmp_path / "o2")],
                  capsys, "latin.txt", "byte offset 3")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "valid.txt").write_text("a b\n")
    _expect_error(["train", "lm", "--data", str(folder), "--out", str(tmp_path / "o3")],
                  capsys, "no training split")


def test_bad_model_directories(trained, tmp_path, capsys):
    _, corpus, out = trained
    _expect_error(["generate", str(tmp_path)], capsys, "not an rnnkit model directory")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"task": "parser"}')
    _expect_error(["eval", str(other), "--data", str(corpus)], capsys,
                  "does not evaluate 'parser' models")
    _expect_error(["score", str(other), str(corpus)], capsys, "expected a 'lm' model")
    (other / "config.json").write_text('{"task": "classifier"}')      # files missing
    _expect_error(["eval", str(other), "--data", str(corpus)], capsys, "tokenizer.json")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in out.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    _expect_error(["generate", str(broken)], capsys, "model.safetensors", "corrupted")


@pytest.mark.parametrize("options, fragment", [
    (["--length", "-1"], "--length"),
    (["--temperature", "0"], "temperature"),
    (["--top-p", "1.5"], "top_p"),
    (["--prime", "\u263a"], "\u263a"),
])
def test_bad_generation_options(trained, capsys, options, fragment):
    _, _, out = trained
    _expect_error(["generate", str(out), *options], capsys, fragment)


def _commands(parser, prefix=()):
    """Every command path of the parser: ("train", "lm"), ("export",), …"""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name)) or ()
                yield (*prefix, name)


def test_every_command_has_help(capsys):
    from rnnkit.cli import build_parser, main

    commands = set(_commands(build_parser()))
    assert {("export",), ("serve",), ("rescore",), ("card",), ("train", "lm")} <= commands
    result = subprocess.run([sys.executable, "-m", "rnnkit", "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "usage:" in result.stdout
    for command in sorted(commands):
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        assert done.value.code == 0, command
        assert "usage:" in capsys.readouterr().out, command


@pytest.mark.parametrize("stop, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_writes_a_resumable_checkpoint(tmp_path, stop, code):
    """Ctrl-C, and SIGTERM (what a batch system sends), finish the step and save."""
    import signal
    import time

    from rnnkit.checkpoint import load_tensors

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "m"
    command = [sys.executable, "-m", "rnnkit", "train", "lm", "--data", str(corpus), "--out",
               str(out), "--level", "char", "--hidden", "8", "--layers", "1",
               "--batch-size", "4", "--bptt", "8", "--epochs", "1000000", "--log-every", "1",
               "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and (not metrics.is_file()
                                      or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.Signals[stop])
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    _, meta = load_tensors(out / "train_state.safetensors")
    step = meta["step"]
    assert step >= 3
    resumed = subprocess.run(command[:5] + ["--out", str(out), "--resume", "--max-steps",
                                            str(step + 2), "--no-progress", "--sample", "0"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"step {step}" in resumed.stdout


@pytest.mark.parametrize("argv, help_of", [
    (["train", "lm", "--bogus"], "rnnkit train lm --help"),
    (["train", "classifier", "--hidden", "8", "stray"], "rnnkit train classifier --help"),
    (["eval", "DIR", "--data", "x", "--bogus"], "rnnkit eval --help"),
])
def test_an_unknown_argument_points_at_its_commands_help(capsys, argv, help_of):
    """The options are listed by the command's own --help, not the top level's."""
    _expect_error(argv, capsys, f"unrecognized arguments: {argv[-1]} (see '{help_of}')")


def test_a_resume_keeps_the_runs_own_sample_option_unless_given_another(tmp_path, capsys):
    """--sample is the finished run's: kept in run.json, a resume prints no sample for a
    run started with --sample 0, and the one asked for when given."""
    text = tmp_path / "t.txt"
    text.write_text("\n".join(["the cat sat on the mat", "a dog ran far away"] * 40) + "\n")
    out = tmp_path / "run"
    code, printed, err = _run(["train", "lm", "--data", str(text), "--level", "word",
                               "--hidden", "8", "--layers", "1", "--bptt", "4",
                               "--batch-size", "2", "--max-steps", "2", "--sample", "0",
                               "--no-progress", "--out", str(out)], capsys)
    assert code == 0 and "sample:" not in printed, err
    code, printed, err = _run(["train", "lm", "--out", str(out), "--resume", "--max-steps",
                               "4", "--no-progress"], capsys)
    assert code == 0 and "sample:" not in printed, err
    code, printed, err = _run(["train", "lm", "--out", str(out), "--resume", "--max-steps",
                               "6", "--no-progress", "--sample", "5"], capsys)
    assert code == 0 and "sample:" in printed, err
