"""When an elementwise kernel runs on the Numba threads, and when on the calling thread alone.

Numba's threads sleep between parallel loops (OMP_WAIT_POLICY=PASSIVE, see __init__.py), and waking
them costs tens of microseconds: an SGD step on a 320-element bias took 70 us in parallel and
under 1 us serially. Elementwise kernels therefore come in a parallel and a serial compilation,
and arrays below SERIAL_BELOW elements take the serial one.
"""
SERIAL_BELOW = 1 << 15
