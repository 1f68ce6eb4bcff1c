"""The `kestrel` command's conventions: --help everywhere, exit codes 0 / 1, errors on stderr only."""
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from harness import run_kestrel  # noqa: E402

COMMANDS = ["inspect", "tokenize", "detokenize", "generate", "score", "build"]


def test_top_level_help_lists_every_command(kestrel_bin):
    r = run_kestrel("--help")
    assert r.returncode == 0
    for c in COMMANDS:
        assert c in r.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(kestrel_bin, command):
    r = run_kestrel(command, "--help")
    assert r.returncode == 0 and "Usage" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["generate", "kestrel-gpt2-kjv", "--prompt", "x", "--no-such-option"], "--no-such-option"),
    (["generate", "/no/such/folder", "--prompt", "x"], "/no/such/folder"),
    (["generate", "kestrel-gpt2-kjv", "--prompt", "x", "--device", "tpu"], "--device tpu"),
    (["generate", "kestrel-gpt2-kjv", "--prompt", "x", "--precision", "fp8"], "--precision fp8"),
    (["score", "kestrel-gpt2-kjv", "--ids", "1,2", "--threads", "-1"], "--threads"),
])
def test_user_errors_exit_1_with_one_line_on_stderr(kestrel_bin, args, message):
    r = run_kestrel(*args, check=False)
    assert r.returncode == 1
    assert message in r.stderr
    assert r.stdout == ""


def test_version(kestrel_bin):
    r = run_kestrel("--version")
    assert r.returncode == 0 and "kestrel" in r.stdout


def test_deterministic_is_accepted_everywhere_and_changes_nothing_on_cpu(kestrel_bin):
    """--deterministic (run_options): on cuda it keeps out the kernels that add partial sums in arbitrary order;
    the CPU engine is deterministic already, so there it must give exactly the same tokens."""
    args = ["generate", "kestrel-gpt2-kjv", "--prompt", "In the beginning", "--device", "cpu",
            "--max-new-tokens", "6", "--json"]
    plain = json.loads(run_kestrel(*args).stdout)
    fixed = json.loads(run_kestrel(*args, "--deterministic").stdout)
    assert fixed["ids"] == plain["ids"] and len(plain["ids"]) == 6
