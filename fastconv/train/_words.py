"""How fit's and search's messages name what gets a user past them: keywords, or the command's flags."""
import contextlib
import contextvars


# fit's and search's messages name what gets a user past them: their keywords, or, while the `fastconv`
# command runs an example, the command's flags (its user has no resume=True to pass).
_KEYWORDS = {"resume": "resume=True", "overwrite": "overwrite=True", "checkpoint_dir": "checkpoint_dir",
             "out_dir": "out_dir", "this call": "this call", "resume it": "fit(..., resume=True)",
             "train on": "to train on, load its weights (checkpoint.load_into) and fit afresh in another "
                         "checkpoint_dir"}
_FLAGS = {"resume": "--resume", "overwrite": "--overwrite", "checkpoint_dir": "--out", "out_dir": "--out",
          "this call": "this command", "resume it": "the same command with --resume",
          "train on": "--overwrite (or another --out) trains a new run instead"}
_words = contextvars.ContextVar("fastconv.train._words", default=_KEYWORDS)


def _say(key):
    """How this run's messages name `key` (one of _KEYWORDS): the keyword, or the command line's flag."""
    return _words.get()[key]


@contextlib.contextmanager
def _command_line_words():
    """Inside, fit's and search's errors, warnings and interrupt notes name the `fastconv` command's flags
    (--resume, --overwrite, --out) where they would name keywords: cli runs the examples in it."""
    token = _words.set(_FLAGS)
    try:
        yield
    finally:
        _words.reset(token)
