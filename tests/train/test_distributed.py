"""Training on several processes (gloo on the CPU, 2 processes started by ``--nproc`` or by
two "machines" meeting at a localhost rendezvous), against one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnnkit import checkpoint
from rnnkit.cli.launch import without_launch_options
from rnnkit.data.stream import ExampleBatches, StreamBatches
from rnnkit.train.distributed import World
from tests.tiny_data import write_lines
from conftest import run_cli

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LM = ["--level", "word", "--hidden", "16", "--layers", "1", "--bptt", "8", "--no-progress",
      "--log-every", "2", "--eval-every", "4"]


def rnnkit(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "rnnkit", *map(str, args)], env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def started(*args, **env) -> subprocess.Popen:
    """``rnnkit ARGS`` started in the background (``env``: more environment variables)."""
    return subprocess.Popen([sys.executable, "-m", "rnnkit", *map(str, args)],
                            env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def long_run(corpus: Path, out: Path, save_every: int = 3) -> list:
    """A two-process language-model run that goes on until it is stopped."""
    return ["train", "lm", "--data", corpus / "text.txt", *LM, "--batch-size", 2, "--epochs",
            1000, "--save-every", save_every, "--out", out, "--nproc", 2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def here(capsys, *args) -> str:
    """``rnnkit ARGS`` in this process (no start-up to pay: the single-process references
    and the refusals made before any process starts) -> its standard output."""
    code, out, err = run_cli(args, capsys)
    assert code == 0, f"exit {code}\n{out}\n{err}"
    return out


def lines_of(run: Path, split: str) -> list[dict]:
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if e["split"] == split]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    import random

    rng = random.Random(0)
    words = "the cat dog sat on a mat red big ran".split()
    root = tmp_path_factory.mktemp("corpus")
    write_lines(root / "text.txt", [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
                                    for _ in range(300)])
    write_lines(root / "labelled.tsv", [f"{int('cat' in line)}\t{line}" for line in (
        " ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(61))])
    return root


# -- the shares, without processes ----------------------------------------------------------

def test_stream_shards_make_up_the_batch_of_one_process():
    ids = torch.arange(1000).numpy()
    whole = StreamBatches(ids, 6, 7)
    shares = [StreamBatches(ids, 3, 7) for _ in range(2)]
    for rank, share in enumerate(shares):
        share.shard(rank, 2)
    while (window := whole.next_window()) is not None:
        parts = [share.next_window() for share in shares]
        for k in range(2):
            assert torch.equal(torch.cat([p[k] for p in parts], dim=1), window[k])
    assert all(share.next_window() is None for share in shares)


def test_example_shares_cover_each_batch_once_and_stand_in_when_short():
    whole = ExampleBatches(13, 6, lengths=[k % 5 for k in range(13)], seed=3)
    shares = [ExampleBatches(13, 3, lengths=[k % 5 for k in range(13)], seed=3)
              for _ in range(2)]
    for rank, share in enumerate(shares):
        share.shard(rank, 2)
    while (batch := whole.next_batch()) is not None:
        parts = [share.next_batch() for share in shares]
        weights = [share.share_weight for share in shares]
        real = [p for p, w in zip(parts, weights) if w]
        assert sorted(k for p in real for k in p) == sorted(batch)
        if len(batch) == 1:                                  # 13 = 2 × 6 + 1
            assert weights == [1.0, 0.0] and parts[1] == batch
    assert all(share.next_batch() is None for share in shares)


def test_world_share_splits_in_order():
    items = list(range(7))
    parts = [World(rank, 3).share(items) for rank in range(3)]
    assert sum(parts, []) == items and [len(p) for p in parts] == [2, 2, 3]


def test_only_a_launch_silences_the_launchers_cpp_notices(monkeypatch):
    from rnnkit.cli.launch import quiet_launcher

    monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", "")          # restored (unset) afterwards
    monkeypatch.delenv("TORCH_CPP_LOG_LEVEL")
    quiet_launcher(["-m", "train", "lm", "--out", "r"])                 # one process
    quiet_launcher(["train.py", "train", "--nproc", "2"])              # someone else's script
    assert "TORCH_CPP_LOG_LEVEL" not in os.environ
    quiet_launcher(["-m", "train", "lm", "--nproc=2", "--out", "r"])
    assert os.environ["TORCH_CPP_LOG_LEVEL"] == "FATAL"


def test_launch_options_do_not_reach_the_processes():
    argv = ["train", "lm", "--nproc", "2", "--out", "r", "--nnodes=1", "--rdzv-endpoint",
            "h:1", "--rdzv-timeout", "5", "--hidden", "8"]
    assert without_launch_options(argv) == ["train", "lm", "--out", "r", "--hidden", "8"]


# -- processes --------------------------------------------------------------------------------

def test_the_recorded_command_is_the_one_that_started_the_run(monkeypatch):
    """run.json and the model card record how the run was started: rnnkit's launcher hands
    its whole command (launch options included) to its processes; a process of plain
    torchrun records torchrun's shape of the run."""
    from rnnkit.cli.train import COMMAND_ENV, recorded_command

    argv = ["train", "lm", "--batch-size", "4"]
    for name in (COMMAND_ENV, "WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert recorded_command(argv) == "rnnkit train lm --batch-size 4"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert recorded_command(argv) == \
        "torchrun --nnodes 2 --nproc-per-node 2 -m rnnkit train lm --batch-size 4"
    monkeypatch.setenv(COMMAND_ENV, "rnnkit train lm --batch-size 4 --nproc 2")
    assert recorded_command(argv) == "rnnkit train lm --batch-size 4 --nproc 2"


def test_two_processes_equal_one_with_their_batch_language_model(corpus, tmp_path, capsys):
    text = corpus / "text.txt"
    rnnkit("train", "lm", "--data", text, *LM, "--batch-size", 2, "--max-steps", 12,
           "--out", tmp_path / "two", "--nproc", 2)
    here(capsys, "train", "lm", "--data", text, *LM, "--batch-size", 4, "--max-steps", 12,
         "--out", tmp_path / "one")
    for split in ("train", "valid"):
        two, one = lines_of(tmp_path / "two", split), lines_of(tmp_path / "one", split)
        assert [e["step"] for e in two] == [e["step"] for e in one]      # once each: rank 0
        for a, b in zip(two, one):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (split, a, b)
    train = lines_of(tmp_path / "two", "train")
    assert all(e["processes"] == 2 and e["tok_per_s_per_process"] == pytest.approx(
        e["tok_per_s"] / 2) for e in train)
    # the model directory is the ordinary one: it loads in one process on the CPU
    assert "ppl" in here(capsys, "eval", tmp_path / "two", "--data", text)
    # its recorded command is the one that started it, --nproc 2 included (the batch size
    # is each process's: without it the command would train another model)
    command = json.loads((tmp_path / "two" / "run.json").read_text())["command"]
    assert command.startswith("rnnkit train lm ") and command.endswith("--nproc 2"), command
    assert "--nproc 2" in (tmp_path / "two" / "README.md").read_text()


def test_unused_parameters_stay_untouched_as_in_one_process(tmp_path, capsys):
    """An adaptive softmax leaves a tail cluster without gradient when no target falls in
    it; with Adam, the two runs agree only if that gradient stays None on every process."""
    import random

    rng = random.Random(1)
    words = [f"w{k}" for k in range(300)]
    weights = [1 / (k + 1) for k in range(300)]                     # Zipf: rare tails
    text = write_lines(tmp_path / "zipf.txt", [" ".join(rng.choices(words, weights, k=8))
                                               for _ in range(400)])
    args = ["--data", text, "--level", "word", "--hidden", 16, "--layers", 1, "--bptt", 4,
            "--log-every", 1, "--max-steps", 30, "--dropout", 0, "--softmax", "adaptive",
            "--cutoffs", "10,60", "--optimizer", "adam", "--lr", 0.01, "--clip", 1,
            "--no-progress", "--eval-every", 30]
    rnnkit("train", "lm", *args, "--batch-size", 1, "--out", tmp_path / "two", "--nproc", 2)
    here(capsys, "train", "lm", *args, "--batch-size", 2, "--out", tmp_path / "one")
    two, one = lines_of(tmp_path / "two", "train"), lines_of(tmp_path / "one", "train")
    assert len(two) == len(one) == 30
    for a, b in zip(two, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)


# 55 training examples: global batches of 6, the last of one example — process 1 gets a
# stand-in whose loss counts for nothing
CLASSIFIER = ["train", "classifier", "--hidden", 8, "--embedding-size", 8, "--dropout", 0,
              "--epochs", 2, "--no-progress", "--log-every", 1, "--lr", 0.01]


@pytest.fixture(scope="module")
def two_process_classifier(corpus, tmp_path_factory) -> tuple[Path, str]:
    """The classifier trained by 2 processes of batch 3: (its model directory, stdout)."""
    out = tmp_path_factory.mktemp("classifier") / "two"
    done = rnnkit(*CLASSIFIER, "--data", corpus / "labelled.tsv", "--batch-size", 3, "--out",
                  out, "--nproc", 2)
    return out, done.stdout


def test_two_processes_equal_one_with_their_batch_classifier(corpus, two_process_classifier,
                                                             tmp_path, capsys):
    two, stdout = two_process_classifier
    here(capsys, *CLASSIFIER, "--data", corpus / "labelled.tsv", "--batch-size", 6, "--out",
         tmp_path / "one")
    for split in ("train", "valid"):
        a, b = lines_of(two, split), lines_of(tmp_path / "one", split)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-5), (split, x, y)
            assert x.get("accuracy") == y.get("accuracy")
    assert "train 55 examples" in stdout
    assert stdout.count(" step ") == 2 and stdout.count("best model:") == 1  # rank 0


def test_each_process_rate_is_its_own_and_the_total_their_sum(two_process_classifier):
    """The step of an epoch's last batch (one example) gives process 1 a stand-in: its own
    rate is 0 there while process 0's is not — no share of the total could say that."""
    train = lines_of(two_process_classifier[0], "train")
    assert len(train) == 20                                  # 10 steps an epoch, 2 epochs
    for e in train:
        rates = e["ex_per_s_by_process"]
        assert e["processes"] == len(rates) == 2 and rates[0] > 0
        assert e["ex_per_s"] == pytest.approx(sum(rates), rel=1e-12)
        assert e["ex_per_s_per_process"] == pytest.approx(e["ex_per_s"] / 2, rel=1e-12)
    stand_ins = [e["epoch"] for e in train if e["ex_per_s_by_process"][1] == 0]
    assert stand_ins == [0, 1]                               # once an epoch, and only then


def test_distributed_resume_is_bit_exact_and_refuses_another_count(corpus, tmp_path, capsys):
    text = corpus / "text.txt"
    common = [*LM, "--batch-size", 2, "--dropout", 0.3, "--save-every", 5]
    rnnkit("train", "lm", "--data", text, *common, "--max-steps", 10, "--out",
           tmp_path / "straight", "--nproc", 2)
    rnnkit("train", "lm", "--data", text, *common, "--max-steps", 5, "--out",
           tmp_path / "cut", "--nproc", 2)
    code, _, err = run_cli(["train", "lm", "--out", tmp_path / "cut", "--resume",
                            "--max-steps", 10], capsys)
    assert code == 2 and "trained by 2 process(es)" in err
    assert "--nproc 2" in err and "Traceback" not in err
    rnnkit("train", "lm", "--out", tmp_path / "cut", "--resume", "--max-steps", 10,
           "--nproc", 2)
    a, _ = checkpoint.load_tensors(tmp_path / "straight" / checkpoint.TRAIN_STATE)
    b, _ = checkpoint.load_tensors(tmp_path / "cut" / checkpoint.TRAIN_STATE)
    assert a.keys() == b.keys() and any(k.startswith("rank.1.carry.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.parametrize("command, how", [
    ("rnnkit train lm --nproc 2 --nnodes 2 --rdzv-endpoint h:1 --out r",
     "as it was started, on 2 machines with --nproc 2 each (--nnodes 2"),
    ("torchrun --nnodes=2 --nproc-per-node=2 -m rnnkit train lm --out r",
     "as it was started, on 2 machines with --nproc 2 each (--nnodes 2"),
    ("rnnkit train lm --nproc 4 --out r", "with --nproc 4 (or torchrun with 4 processes"),
])
def test_a_resume_with_another_world_size_is_told_the_run_s_layout(tmp_path, monkeypatch,
                                                                   command, how):
    from rnnkit.tasks import recipe

    checkpoint.write_json(tmp_path / recipe.RUN, {"command": command})
    monkeypatch.setattr(recipe, "train_state_meta", lambda out: {"processes": 4})
    with pytest.raises(ValueError, match="trained by 4 process") as refused:
        recipe.check_processes(tmp_path, World(0, 2, 0, "gloo"))
    assert how in str(refused.value)


def test_a_killed_process_stops_the_others_and_keeps_the_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    run = started(*long_run(corpus, out))
    workers = _workers_once_saved(out)
    os.kill(int(workers[-1]), signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = run.communicate(timeout=60)
    assert time.monotonic() - killed < 30
    assert run.returncode == 1 and "was killed by SIGKILL" in stderr, stderr
    assert "Traceback" not in stderr
    _, meta = checkpoint.load_tensors(out / checkpoint.TRAIN_STATE)   # whole, resumable
    assert meta["processes"] == 2 and meta["step"] % 3 == 0


def test_a_killed_process_of_one_machine_ends_the_run_on_both(corpus, tmp_path):
    """Two machines met at a rendezvous; one's process is killed: that machine names it,
    the other says it lost contact (not that the machines never met), both exit 1."""
    out, port = tmp_path / "run", free_port()
    args = [*long_run(corpus, out)[:-2], "--nproc", 1, "--nnodes", 2, "--rdzv-endpoint",
            f"localhost:{port}"]
    nodes = [started(*args)]
    time.sleep(0.5)                         # the first hosts the rendezvous
    nodes.append(started(*args))
    _workers_once_saved(out)
    host_worker = subprocess.run(["pgrep", "-P", str(nodes[0].pid)], capture_output=True,
                                 text=True).stdout.split()
    os.kill(int(host_worker[0]), signal.SIGKILL)
    errs = [node.communicate(timeout=60)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [1, 1], errs
    assert "was killed by SIGKILL" in errs[0] and "lost contact" in errs[1], errs
    assert not any("did not meet" in e or "Traceback" in e for e in errs), errs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl: Linux only")
def test_processes_whose_launcher_is_killed_save_and_stop(corpus, tmp_path):
    """kill -9 of the launcher (an out-of-memory kill, say): its processes are sent SIGTERM
    by the kernel, so they save and stop instead of training on, orphaned."""
    out = tmp_path / "run"
    run = started(*long_run(corpus, out, save_every=1000))
    workers = _workers_started(out)
    run.kill()
    try:
        said, _ = run.communicate(timeout=60)    # the processes hold its pipes: until they end
    finally:
        orphans = [pid for pid in workers if _running(pid)]
        for pid in orphans:                       # none, unless the test fails
            os.kill(int(pid), signal.SIGKILL)
    assert not orphans, "orphans train on"
    _, meta = checkpoint.load_tensors(out / checkpoint.TRAIN_STATE)
    assert meta["processes"] == 2 and "SIGTERM: finishing this step" in said, said
    assert f"saved a resumable checkpoint at step {meta['step']}" in said, said
    rnnkit("train", "lm", "--out", out, "--resume", "--max-steps", meta["step"] + 2,
           "--nproc", 2)                                   # the directory is free again


def test_a_hung_process_is_named_and_the_run_stops_within_its_timeout(corpus, tmp_path):
    out = tmp_path / "run"
    run = started(*long_run(corpus, out), RNNKIT_DIST_TIMEOUT="4")
    workers = _workers_once_saved(out)
    os.kill(int(workers[-1]), signal.SIGSTOP)            # rank 1 hangs: it never answers
    stopped = time.monotonic()
    _, stderr = run.communicate(timeout=60)
    assert time.monotonic() - stopped < 4 + 6, stderr   # the timeout, 1 s of grace (not 30)
    assert run.returncode == 1, stderr                      # not 2: the input was fine
    assert "process 0 timed out waiting for the others after 4 s" in stderr
    assert f"process 1 (pid {workers[-1]}) stopped answering (suspended, SIGSTOP)" in stderr
    assert "Traceback" not in stderr and ".cc:" not in stderr


def test_sigterm_saves_and_stops_as_ctrl_c_does(corpus, tmp_path):
    out = tmp_path / "run"
    run = started(*long_run(corpus, out, save_every=1000))
    deadline = time.monotonic() + 60
    while not (out / "metrics.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)                                       # training, not starting
    run.send_signal(signal.SIGTERM)                     # what Slurm and Kubernetes send
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 143, stderr
    assert "saved a resumable checkpoint at step" in stdout, (stdout, stderr)
    assert "Traceback" not in stderr
    _, meta = checkpoint.load_tensors(out / checkpoint.TRAIN_STATE)
    assert meta["processes"] == 2 and f"at step {meta['step']};" in stdout


def test_the_compiled_build_is_announced_by_the_one_process_that_builds(tmp_path):
    """The processes of a run all load the compiled loops; one builds (under the build
    lock), the others find them built: one message. The build itself is stood in for."""
    script = (
        "import time\n"
        "from pathlib import Path\n"
        "from torch.utils import cpp_extension\n"
        "import rnnkit.compiled as compiled\n"
        "def build(name, sources, build_directory, **options):\n"
        "    time.sleep(3)\n"
        "    (Path(build_directory) / (name + '.so')).touch()\n"
        "    return object()\n"
        "cpp_extension.load = build\n"
        "assert compiled.load() is not None\n")
    env = {**ENV, "XDG_CACHE_HOME": str(tmp_path), "RNNKIT_COMPILED": "1"}
    runs = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    errs = [run.communicate(timeout=60)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errs
    assert sum(err.count("building the compiled recurrent loops") for err in errs) == 1, errs


def _workers_started(out: Path) -> list[str]:
    """The pids of the two processes of the run in ``out`` once it has written a training
    line (it is in the loop, where a stop signal makes it save)."""
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
            metrics.is_file() and '"train"' in metrics.read_text()):
        time.sleep(0.2)
    return _workers_of(out)


def _workers_once_saved(out: Path) -> list[str]:
    """The pids of the two processes of the run in ``out`` (not its launcher), once it has
    saved a checkpoint."""
    state = out / checkpoint.TRAIN_STATE
    deadline = time.monotonic() + 60
    while not state.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state.is_file(), "no checkpoint within a minute"
    return _workers_of(out)


def _running(pid: str) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an orphan's end: its new parent
    may not reap it)."""
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2][:4]
    except OSError:
        return False


def _workers_of(out: Path) -> list[str]:
    """The pids of the two processes of the run in ``out`` (not its launcher)."""
    found = subprocess.run(["pgrep", "-af", "--", f"rnnkit train lm .*--out {out}"],
                           capture_output=True, text=True).stdout.splitlines()
    workers = [line.split()[0] for line in found if "--nproc" not in line]
    assert len(workers) == 2, workers
    return workers


def two_machines(corpus: Path, out: Path) -> list:
    """One machine's command of a run of two "machines" meeting on localhost."""
    return ["train", "lm", "--data", corpus / "text.txt", *LM, "--batch-size", 2,
            "--max-steps", 4, "--out", out, "--nproc", 1, "--nnodes", 2,
            "--rdzv-endpoint", f"localhost:{free_port()}"]


def test_two_machines_meet_at_a_localhost_rendezvous(corpus, tmp_path):
    args = two_machines(corpus, tmp_path / "run")
    nodes = [started(*args) for _ in range(2)]
    outputs = [node.communicate(timeout=120) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert sum("on 2 processes (gloo, cpu)" in out for out, _ in outputs) == 1
    other = next(out for out, _ in outputs if "on 2 processes" not in out)
    assert "1 process(es) here joined a run of 2; process 0, on " in other, other
    assert "the run ended (max_steps) at step 4" in other, other
    assert lines_of(tmp_path / "run", "valid")[-1]["step"] == 4


def test_a_launch_option_in_a_config_file_is_sent_to_the_command_line(corpus, tmp_path,
                                                                      capsys):
    config = tmp_path / "run.toml"
    config.write_text("nproc = 2\n", encoding="utf-8")
    code, _, err = run_cli(["train", "lm", "--data", corpus / "text.txt", "--config", config,
                            "--out", tmp_path / "run"], capsys)
    assert code == 2 and f"{config}: nproc: a launch option" in err, err
    assert "give --nproc on the command line" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["inf", "1e30", "0", "soon"])
def test_a_bad_dist_timeout_is_refused_before_any_process(corpus, tmp_path, capsys,
                                                         monkeypatch, value):
    monkeypatch.setenv("RNNKIT_DIST_TIMEOUT", value)
    code, _, err = run_cli(["train", "lm", "--data", corpus / "text.txt", *LM, "--out",
                            tmp_path / "run", "--nproc", "2"], capsys)
    assert code == 2 and f"RNNKIT_DIST_TIMEOUT={value!r}: expected a number of seconds" \
        in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, message", [
    (["--nproc", "100000"], "CPU core(s)"),
    (["--nproc", "0"], "--nproc: expected a number of processes >= 1"),
    (["--nproc", "1", "--device", "cuda"], "no CUDA device"),
    (["--nnodes", "2"], "--rdzv-endpoint HOST:PORT"),
    (["--nproc", "1", "--rdzv-endpoint", "nohost"], "expected HOST:PORT"),
    (["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", "no-such-host.invalid:29400"],
     "--rdzv-endpoint no-such-host.invalid:29400: the host name no-such-host.invalid does "
     "not resolve"),
    (["--rdzv-timeout", "5"], "--rdzv-timeout: it bounds the wait at a rendezvous of several "
                              "machines; give it with --nnodes M and --rdzv-endpoint"),
    (["--precision", "fp16"], "fp16 trains on a CUDA device only"),
    (["--precision", "fp16", "--nproc", "2"], "fp16 trains on a CUDA device only"),
    (["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", "localhost:99999"],
     "port 99999 is out of range"),
    (["--nproc", "1", "--rdzv-endpoint", "localhost:29400"],
     "--rdzv-endpoint localhost:29400: it is where the machines of a run meet; give --nnodes"),
    (["--nnodes", "2", "--rdzv-endpoint", "localhost:29400", "--rdzv-timeout", "0.5"],
     "--rdzv-timeout: expected seconds from 1 to 604800 (a week), got 0.5"),
    (["--nnodes", "2", "--rdzv-endpoint", "localhost:29400", "--rdzv-timeout", "inf"],
     "--rdzv-timeout: expected seconds from 1 to 604800 (a week), got inf"),
], ids=["nproc-above-cores", "nproc-zero", "nccl-without-cuda", "nnodes-without-endpoint",
        "bad-endpoint", "unknown-host", "rdzv-timeout-alone", "fp16-on-cpu",
        "fp16-on-cpu-before-the-processes", "port-out-of-range",
        "endpoint-without-nnodes", "rdzv-timeout-below-a-second", "rdzv-timeout-inf"])
def test_bad_launches_are_refused_clearly(corpus, tmp_path, capsys, extra, message):
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(["train", "lm", "--data", corpus / "text.txt", *LM, "--out",
                            tmp_path / "run", *extra], capsys)       # before any process
    assert code == 2 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_the_launcher_refuses_a_taken_directory_before_any_process_starts(
        corpus, tmp_path, capsys, monkeypatch):
    from rnnkit.cli import launch
    from rnnkit.runlock import RunLock

    def started(*args, **kwargs):
        raise AssertionError("processes started")

    monkeypatch.setattr(launch, "launch", started)
    held, model = tmp_path / "held", tmp_path / "model"
    model.mkdir()
    (model / checkpoint.WEIGHTS).write_bytes(b"weights")
    command = ["train", "lm", "--data", corpus / "text.txt", *LM, "--nproc", "2", "--out"]
    with RunLock(held):
        for out, extra, message in [(model, [], "holds a model or run already"),
                                    (held, [], "a run directory in use"),
                                    (held, ["--resume"], "a run directory in use"),
                                    (tmp_path / "none", ["--resume"], "no such run directory"),
                                    (model, ["--resume"], "no run to resume")]:
            code, _, err = run_cli([*command, out, *extra], capsys)
            assert code == 2 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held", "model"]
    assert not any(held.iterdir())              # the lock's file, removed by its holder


def test_a_start_refused_by_process_0_is_said_once_and_leaves_nothing(corpus, tmp_path):
    few = write_lines(tmp_path / "few.txt", ["the cat sat on the mat"] * 6)
    done = rnnkit("train", "lm", "--data", few, *LM, "--batch-size", 12, "--out",
                  tmp_path / "run", "--nproc", 2, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("rnnkit: error:") == 1
    assert "2 processes × batch size 12 = 24 streams" in done.stderr
    assert not (tmp_path / "run").exists()
    done = rnnkit("train", "lm", "--out", tmp_path / "nothing", "--resume", "--nproc", 2,
                  check=False)
    assert done.returncode == 2 and done.stderr.count("rnnkit: error:") == 1, done.stderr
    assert "no such run directory to resume" in done.stderr and "lost contact" not in \
        done.stderr


@pytest.mark.parametrize("host", ["nobody", "silent"])
def test_a_rendezvous_nobody_joins_fails_within_its_timeout_in_one_line(corpus, tmp_path, host):
    """``nobody``: this machine hosts the rendezvous and the other never comes; ``silent``: the
    rendezvous host takes the connection and never answers, where torch's own retries went
    on for more than ten minutes past a 3 s timeout."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
        if host == "silent":
            s.listen(0)
        started = time.monotonic()
        done = rnnkit("train", "lm", "--data", corpus / "text.txt", *LM, "--out",
                      tmp_path / "r", "--nproc", 1, "--nnodes", 2, "--rdzv-endpoint",
                      f"localhost:{port}", "--rdzv-timeout", 2, check=False)
        took = time.monotonic() - started
    assert took < 2 + 8                                     # start-up, timeout, 1 s margin
    assert done.returncode == 2 and "did not meet within 2 s" in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr  # no C++ stack traces
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("other, message", [
    (["--hidden", "24"], "in process 0's); start the same command on every machine"),
    (["--out", "elsewhere"], "--out must name a folder every machine sees"),
], ids=["other-options", "out-not-shared"])
def test_machines_that_differ_are_refused_by_process_0_and_leave_nothing(corpus, tmp_path,
                                                                         other, message):
    """The processes after the first read the run's settings from process 0's run.json:
    a machine started with other options, or whose --out is not the folder process 0 wrote
    (no shared file system), is refused at the start — each machine says why, once, and
    the new run's folder is removed."""
    args = two_machines(corpus, tmp_path / "run")
    second = [*args, *[tmp_path / v if v == "elsewhere" else v for v in other]]
    nodes = [started(*command) for command in (args, second)]
    outputs = [node.communicate(timeout=120) for node in nodes]
    errors = "".join(err for _, err in outputs)
    assert [node.returncode for node in nodes] == [2, 2], outputs
    for _, err in outputs:                      # said once on each machine
        assert err.count("rnnkit: error:") == 1 and message in err, outputs
    assert "Traceback" not in errors and "lost contact" not in errors
    assert not (tmp_path / "run").exists() and not (tmp_path / "elsewhere").exists()


def test_a_model_that_leaves_parameters_unused_undeclared_is_told_what_to_do(tmp_path):
    """DDP looks for unused parameters only in a model that declares it may leave some
    (leaves_parameters_unused); one that does so undeclared gets DDP's error at its next
    step, which the loop turns into one that names the way out."""
    import torch.distributed as dist
    from torch import nn

    from rnnkit.train import distributed

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 1), nn.Linear(3, 1)

        def forward(self, x):
            return self.used(x).sum()

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = Skips()
        assert not distributed.leaves_parameters_unused(model)
        ddp = distributed.replica(model, World(0, 1, 0, "gloo"), torch.device("cpu"))
        ddp(torch.ones(2, 3)).backward()
        with pytest.raises(RuntimeError) as raised:
            ddp(torch.ones(2, 3))
        said = distributed.unused_parameters_error(raised.value)
        assert isinstance(said, ValueError) and "leaves_parameters_unused = True" in str(said)
        assert distributed.unused_parameters_error(RuntimeError("other")) is None
        Skips.leaves_parameters_unused = True           # declared: DDP looks, no error
        ddp = distributed.replica(Skips(), World(0, 1, 0, "gloo"), torch.device("cpu"))
        for _ in range(2):
            ddp(torch.ones(2, 3)).backward()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("which", [0, 1])
def test_a_signal_to_one_process_stops_all_alike(corpus, tmp_path, which):
    """A Ctrl-C that reaches one process only (a machine's own launcher, or a kill -INT):
    every process stops after the step as that one does, saves, and exits 130 — also the
    ones the signal did not reach."""
    out = tmp_path / "run"
    run = started(*long_run(corpus, out))
    workers = _workers_once_saved(out)
    os.kill(int(workers[which]), signal.SIGINT)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, (stdout, stderr)
    assert "saved a resumable checkpoint at step" in stdout
    assert "Traceback" not in stderr and "lost contact" not in stderr and \
        "rnnkit: error" not in stderr, stderr


def test_a_machine_is_refused_for_the_run_arguments_alone(tmp_path):
    """What every machine must give alike: the run's arguments, not its launch options
    (a machine's own --nproc, another name of the rendezvous host) nor torchrun's; a
    resume's budget too (a --max-steps of its own would end it at another step)."""
    from rnnkit.tasks.recipe import RUN, _cannot_follow

    (tmp_path / RUN).write_text("{}")
    start = {"out": str(tmp_path), "host": "a"}
    ours = "rnnkit train lm --hidden 16 --out r --nproc 4 --rdzv-endpoint host-a:29400"
    for theirs, refused in [
        ("rnnkit train lm --hidden 16 --out r --nproc 8 --rdzv-endpoint 10.0.0.1:29400", ""),
        ("torchrun --nnodes 2 --nproc-per-node 8 -m rnnkit train lm --hidden 16 --out r", ""),
        ("rnnkit train lm --out /elsewhere/r --hidden=16", ""),   # order, =, --out's spelling
        ("rnnkit train lm --hidden 32 --out r --nproc 4",
         "--hidden 16 in process 1's, 32 in process 0's"),
        ("rnnkit train lm --hidden 16 --out r --resume --max-steps 20",
         "--max-steps (not given) in process 1's, 20 in process 0's; --resume (not given)"),
        ("rnnkit train classifier --hidden 16 --out r",
         "the command train lm in process 1's, train classifier in process 0's"),
    ]:
        said = _cannot_follow(tmp_path, ours, {**start, "command": theirs}, 1)
        assert (said is None) if not refused else (refused in said), (theirs, said)


def test_sigterm_to_every_process_of_the_job_saves_once(corpus, tmp_path):
    """A batch system's stop (Slurm's scancel) signals every process of the job: the
    launcher, which passes it on, and each process directly. The processes take
    the two for one request — finish the step, save, exit — not for a second Ctrl-C."""
    out = tmp_path / "run"
    run = started(*long_run(corpus, out))
    workers = _workers_once_saved(out)
    for pid in [run.pid, *map(int, workers)]:
        os.kill(pid, signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 143, (stdout, stderr)
    assert "saved a resumable checkpoint at step" in stdout
    assert "Traceback" not in stderr and "rnnkit: error" not in stderr, stderr
    _, meta = checkpoint.load_tensors(out / checkpoint.TRAIN_STATE)
    assert meta["processes"] == 2


def test_a_failed_runs_line_says_what_is_kept(tmp_path):
    """The launcher's line for a failed run promises a checkpoint only where there is one."""
    from rnnkit.cli.launch import _what_is_kept

    assert "no checkpoint was saved yet" in _what_is_kept(str(tmp_path))
    checkpoint.save_tensors(tmp_path / checkpoint.TRAIN_STATE, {"x": torch.zeros(1)})
    assert _what_is_kept(str(tmp_path)) == \
        f"; the last good checkpoint in {tmp_path} is kept. Continue with --resume"
