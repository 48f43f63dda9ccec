"""A line on stderr when fit's first use of a cpu kernel compiles it (an empty Numba cache).

The first run on a machine spends about a minute compiling the kernels it uses (the digits CNN on two
cores), before and during its first training steps: without a word, its progress bar sat at 0%. fit
with a progress bar says once, at the first compile of one of fastconv's kernels, what is happening
and that it happens once. A warm cache compiles nothing and prints nothing.
"""
import contextlib
import functools
import sys

NOTICE = ("fastconv: compiling the cpu kernels this run uses for this CPU, once (Numba caches them): up to a "
          "minute or two")


@contextlib.contextmanager
def noting_compiles(enabled):
    """While inside: the NOTICE on stderr at the first compile of a fastconv kernel (if enabled)."""
    if not enabled:
        yield
        return
    from numba.core import event

    class FirstCompile(event.Listener):
        said = False

        def on_start(self, ev):
            if self.said:
                return
            try:
                module = ev.data["dispatcher"].py_func.__module__ or ""
            except Exception:  # never fail the compile it watches
                return
            if module.startswith("fastconv."):
                self.said = True
                from tqdm.auto import tqdm
                tqdm.write(NOTICE, file=sys.stderr)  # (above a progress bar, when one is drawn)

        def on_end(self, ev):
            pass

    with event.install_listener("numba:compile", FirstCompile()):
        yield


def noted(fit):
    """fit, saying so when it compiles (its keyword `progress`, default True, turns the notice on)."""
    @functools.wraps(fit)
    def with_notice(*args, **kwargs):
        with noting_compiles(bool(kwargs.get("progress", True))):
            return fit(*args, **kwargs)
    return with_notice
