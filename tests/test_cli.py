import pytest

from unet_tf.cli import COMMANDS, main
from conftest import run_cli


def test_sizes_command(capsys):
    assert main(["sizes", "572", "570"]) == 0
    out = capsys.readouterr().out
    assert "572: valid, output 388" in out
    assert "570: not valid, next valid input 572" in out


def test_sizes_of_a_volume_net_per_axis(capsys):
    assert main(["sizes", "--voxel-size", "1,0.2,0.2", "--depth", "4", "5,100,100",
                 "5,101,101"]) == 0
    out = capsys.readouterr().out
    assert "level 0: kernels 1x3x3, then pool 1x2x2" in out      # z: 5 slices, 5x coarser
    assert "5,100,100: valid, output 5,12,12" in out
    assert ("5,101,101: not valid (Y 101: use 100 or 108; X 101: use 100 or 108); next valid "
            "input 5,108,108 (output 5,20,20)") in out
    assert main(["sizes", "--voxel-size", "1,1,1", "--depth", "3", "44,44,48"]) == 0
    assert "44,44,48: valid, output 4,4,8" in capsys.readouterr().out
    for bad, message in [(["--voxel-size", "1,0.2", "5,100,100"], "three comma-separated"),
                         (["--voxel-size", "1,1,1", "5,100"], "three comma-separated"),
                         (["--voxel-size", "1,0,1"], "positive"), (["57x"], "an integer")]:
        assert main(["sizes", *bad]) == 2
        assert message in capsys.readouterr().err


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
