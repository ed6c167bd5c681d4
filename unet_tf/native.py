"""Native code's start-up noise kept off the user's stderr (:mod:`.backend` imports TensorFlow so).

TensorFlow >= 2.19 writes INFO lines (oneDNN notes, absl's "All log messages before
absl::InitializeLog()") straight to file descriptor 2 when it is imported, whatever
``TF_CPP_MIN_LOG_LEVEL`` says (tensorflow/tensorflow#100442); they would break the CLI's
one-line error rule and clutter every log.
"""

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def stderr_captured():
    """Keep what native code writes to fd 2 inside the block off the user's stderr; it is
    replayed if the block fails, so an error is still explained."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)

