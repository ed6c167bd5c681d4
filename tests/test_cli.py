import subprocess
import sys


from unet_tf.cli import COMMANDS, main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "unet_tf.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_sizes_command(capsys):
    assert main(["sizes", "572", "570"]) == 0
    out = capsys.readouterr().out
    assert "572: valid, output 388" in out
    assert "570: not valid, next valid input 572" in out


def test_every_subcommand_has_help_with_examples():
    listed = run_cli("--help").stdout
    for name in COMMANDS:
        assert name in listed
        result = run_cli(name, "--help")
        assert result.returncode == 0, result.stderr
        assert "examples:" in result.stdout and f"unet-tf {name}" in result.stdout


def test_bad_argument_is_one_line_and_exit_code_2():
    result = run_cli("summary", "--tile-size", "570")
    assert result.returncode == 2
    assert result.stderr.strip() == "unet-tf: error: input 570 is not valid for depth 5: use 556 or 572"
