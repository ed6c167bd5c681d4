"""How fast the command line answers: `unet-tf --help`, `unet-tf sizes 570` and
`import unet_tf.cli`, each a fresh process, against `python -c pass` (the interpreter's own
start) and `import unet_tf.backend` (what every command paid when the package imported
TensorFlow eagerly). Goal: --help and sizes in <= 0.5 s on 2 cores.

    python benchmarks/bench_startup.py [--quick]
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from _timing import best_time, report

GOAL_S = 0.5


def command(*args):
    return lambda: subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 runs each instead of 7")
    repeat = 3 if parser.parse_args().quick else 7
    beside = Path(sys.executable).with_name("unet-tf")   # the venv's script, activated or not
    cli = str(beside) if beside.exists() else shutil.which("unet-tf")
    if cli is None:
        sys.exit("unet-tf is not installed here: pip install -e '.[cpu]'")
    python = sys.executable
    baseline = best_time(command(python, "-c", "pass"), repeat)
    eager = best_time(command(python, "-c", "import unet_tf.backend"), repeat)
    print(f"python -c pass: {baseline:.3f} s; import unet_tf.backend (TensorFlow): {eager:.3f} s")
    for name, run in (("unet-tf --help", command(cli, "--help")),
                      ("unet-tf sizes 570", command(cli, "sizes", "570")),
                      ("import unet_tf.cli", command(python, "-c", "import unet_tf.cli"))):
        seconds = best_time(run, repeat)
        verdict = "meets" if seconds <= GOAL_S else "MISSES"
        print(f"{name}: {seconds:.3f} s, {seconds - baseline:.3f} s over the interpreter's start "
              f"({verdict} the {GOAL_S} s goal)")
        report(f"startup {name} vs TensorFlow import", "import unet_tf.backend", eager, seconds,
               unit="s")


if __name__ == "__main__":
    main()
