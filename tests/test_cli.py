import pytest

from unet_tf.cli import COMMANDS, main
from conftest import run_cli


def test_sizes_command(capsys):
    assert main(["sizes", "572", "570"]) == 0
    out = capsys.readouterr().out
    assert "572: valid, output 388" in out
    assert "570: not valid, next valid input 572" in out


def test_every_subcommand_has_help_with_examples(capsys):
    listed = run_cli("--help").stdout          # the console entry, in a fresh process
    for name in COMMANDS:                      # each subcommand's parser, in this one
        assert name in listed
        with pytest.raises(SystemExit) as exit:
            main([name, "--help"])
        out = capsys.readouterr().out
        assert exit.value.code == 0
        assert "examples:" in out and f"unet-tf {name}" in out


def test_bad_argument_is_one_line_and_exit_code_2():
    result = run_cli("summary", "--tile-size", "570")
    assert result.returncode == 2
    assert result.stderr.strip() == "unet-tf: error: input 570 is not valid for depth 5: use 556 or 572"
