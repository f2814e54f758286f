"""``compressai-feds``: one command with a sub-command per job.

compressai-feds train ...       # the FEDS trainer (see compressai_feds.train)
compressai-feds benchmark ...   # teacher vs student, measured in one run
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="compressai-feds", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("command", choices=["train", "benchmark"])
    args = parser.parse_args(argv[:1])
    if args.command == "train":
        from .train import main as train

        return train(argv[1:])
    from .benchmark import main as benchmark

    benchmark(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
