"""``python render.py SPEC [options]`` is ``cinesynth render SPEC [options]``."""

import sys

from cinesynth_batch.cli import main

if __name__ == "__main__":
    main(["render", *sys.argv[1:]])
