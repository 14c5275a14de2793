"""`python -m pipeline`: the `etude` command (also what `etude train` launches per rank)."""

import os
import signal

if "ETUDE_LAUNCHER_PID" in os.environ:  # a rank of `etude train`'s launch
    # Ctrl-C ends a rank at once and without a word: the launcher prints the one line
    # for the run (pipeline.modeling.train). Exiting at any point is safe, as a SIGKILL
    # is: outputs are written whole or not at all, and a rerun resumes from last.pt.
    # (Unwinding instead would print a traceback per rank, more so mid-import.)
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))

from pipeline.cli import app  # noqa: E402  (after the handler: the import takes seconds)

app(prog_name="etude")
