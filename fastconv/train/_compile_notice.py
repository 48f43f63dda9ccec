"""A line on stderr when a run's first use of a cpu kernel compiles it (an empty Numba cache).

The first run on a machine spends about a minute compiling the kernels it uses (the digits CNN on two
cores), before and during its first training steps: without a word, its progress bar sat at 0%. fit
with a progress bar (and `fastconv evaluate`) says once, at the first compile of one of fastconv's
kernels, what is happening and that it happens once. A warm cache compiles nothing and prints nothing.
"""
import sys

NOTICE = ("fastconv: compiling the cpu kernels this run uses for this CPU, once (Numba caches them): up to a "
          "minute or two")


class CompileNotice:
    """Between start() and stop() (or in a `with`, as often as needed): the NOTICE on stderr at the first
    compile of a fastconv kernel, once per object; nothing if not enabled. (fit's two scopes, its first
    forward and its loop, rather than a wrapper around fit: a wrapper's frame would move the warnings fit
    raises, with their stacklevel, off the caller's line.)"""

    def __init__(self, enabled):
        self.enabled, self.said, self._listener = enabled, False, None

    def start(self):
        if not self.enabled or self._listener is not None:
            return
        from numba.core import event

        notice = self

        class FirstCompile(event.Listener):
            def on_start(self, ev):
                if notice.said:
                    return
                try:
                    module = ev.data["dispatcher"].py_func.__module__ or ""
                except Exception:  # never fail the compile it watches
                    return
                if module.startswith("fastconv."):
                    notice.said = True
                    from tqdm.auto import tqdm
                    tqdm.write(NOTICE, file=sys.stderr)  # (above a progress bar, when one is drawn)

            def on_end(self, ev):
                pass

        self._listener = FirstCompile()
        event.register("numba:compile", self._listener)

    def stop(self):
        if self._listener is not None:
            from numba.core import event
            event.unregister("numba:compile", self._listener)
            self._listener = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
